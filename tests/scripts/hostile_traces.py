# Writes hostile trace directories into the current directory (no numpy
# needed): every case a loader must refuse with a clear error.
import struct, os, sys, json
def npy(path, shape, fill=0.5, data=None):
    hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % (", ".join(str(s) for s in shape) + ("," if len(shape)==1 else ""))
    while (10 + len(hdr) + 1) % 64: hdr += ' '
    hdr += '\n'
    n = 1
    for s in shape: n *= s
    with open(path, 'wb') as f:
        f.write(b'\x93NUMPY\x01\x00' + struct.pack('<H', len(hdr)) + hdr.encode())
        if data is None:
            f.write(struct.pack('<%df' % n, *([fill] * n)) if n < 10**7 else b'')
def trace(name, H=2, KV=1, seq=64, dk=8, dv=8, meta=None, fill=0.5):
    os.makedirs(name, exist_ok=True)
    json.dump(meta or {"scale": 0.35}, open(name + "/trace.json", "w"))
    npy(name + "/L0_q.npy", (H, seq, dk), fill)
    npy(name + "/L0_k.npy", (KV, seq, dk), fill)
    npy(name + "/L0_v.npy", (KV, seq, dv), fill)
trace("ok")
trace("seq0", seq=0)
trace("seq1", seq=1)
trace("dk0", dk=0)
trace("dk4096", dk=4096, seq=4)
trace("theta_neg", meta={"scale": 0.35, "rope": {"theta": -1e4}})
trace("theta_huge", meta={"scale": 0.35, "rope": {"theta": 1e300}})
trace("dims_odd", meta={"scale": 0.35, "rope": {"theta": 1e4, "dims": 3}})
trace("scale_neg", meta={"scale": -1})
trace("big", fill=1e9)
trace("group", H=34, KV=2)
# sparse huge npy: header claims 2^38 floats, file truncated-sparse
os.makedirs("sparse", exist_ok=True)
json.dump({"scale": 0.35}, open("sparse/trace.json", "w"))
for x in "qkv":
    npy(f"sparse/L0_{x}.npy", (1, 1 << 20, 1 << 16), data=b'')
    os.truncate(f"sparse/L0_{x}.npy", (1 << 38) * 4 + 128)
os.makedirs("fifo", exist_ok=True)
if not os.path.exists("fifo/trace.json"): os.mkfifo("fifo/trace.json")

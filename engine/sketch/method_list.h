// Every method, once. A method is its file (engine/sketch/<name>.cc, in
// engine/CMakeLists.txt) plus one line here:
//   X(enumerator, name, constructor, workspace floats)
// The Method enum, names, parsing, construction and scratch sizing are all
// generated from this list (sketch.h, sketch.cc, methods.h). The public
// lists follow it by hand: the C ABI's KVS_METHOD_* numbering and names
// (kvsketch_c.h, kvsketch_c.cc: an ABI, so append only) and the Python
// package's METHODS.
#pragma once

#define KVSKETCH_METHODS(X)                                   \
  X(kExact, "exact", MakeExact, NoWorkspaceFloats)            \
  X(kWindow, "window", MakeWindow, NoWorkspaceFloats)         \
  X(kUniform, "uniform", MakeUniform, NoWorkspaceFloats)      \
  X(kBalance, "balance", MakeBalance, BalanceWorkspaceFloats) \
  X(kTaylor, "taylor", MakeTaylor, TaylorWorkspaceFloats)     \
  X(kHashed, "hashed", MakeHashed, HashedWorkspaceFloats)     \
  X(kH2O, "h2o", MakeSelective, SelectiveWorkspaceFloats)     \
  X(kTova, "tova", MakeSelective, SelectiveWorkspaceFloats)   \
  X(kRisk, "risk", MakeSelective, SelectiveWorkspaceFloats)   \
  X(kBlurry, "blurry", MakeBlurry, BlurryWorkspaceFloats)

/* kvsketch version, for the preprocessor (C and C++). The CMake build checks
 * that these match the project version. */
#ifndef KVSKETCH_VERSION_H_
#define KVSKETCH_VERSION_H_

#define KVSKETCH_VERSION_MAJOR 0
#define KVSKETCH_VERSION_MINOR 5
#define KVSKETCH_VERSION_PATCH 11
/* MAJOR * 10000 + MINOR * 100 + PATCH, e.g. #if KVSKETCH_VERSION_NUMBER >= 200
 */
#define KVSKETCH_VERSION_NUMBER                                    \
  (KVSKETCH_VERSION_MAJOR * 10000 + KVSKETCH_VERSION_MINOR * 100 + \
   KVSKETCH_VERSION_PATCH)

#endif /* KVSKETCH_VERSION_H_ */

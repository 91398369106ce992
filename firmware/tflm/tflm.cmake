# TFLite-Micro for the firmware, from a tree made by TFLM's
#   tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py \
#       --makefile_options="TARGET=cortex_m_generic OPTIMIZED_KERNEL_DIR=cmsis_nn" DIR
# (`dsmn-host tflm-tree` runs it). Layout: tensorflow/, third_party/{flatbuffers,gemmlowp,kissfft,
# ruy,cmsis,cmsis_nn}/, signal/; the CMSIS-NN kernels in tensorflow/lite/micro/kernels/cmsis_nn/.
#
# Two uses, one set of flags:
#  - the library project (firmware/tflm/CMakeLists.txt) compiles DSMN_TFLM_SOURCES, the list
#    dsmn-host picked (the framework plus the kernels of the model's ops, never every kernel)
#    into libtflm.a; dsmn-host caches that library keyed by core, sources and flags;
#  - the firmware (top-level CMakeLists.txt) links that library, DSMN_TFLM_LIB, as `tflm`.
if(NOT DSMN_TFLM_DIR)
  message(FATAL_ERROR "--runtime tflm needs a TFLM source tree: pass --tflm-dir DIR "
                      "(made by `dsmn-host tflm-tree`, i.e. create_tflm_tree.py with the cmsis_nn kernels)")
endif()
if(NOT EXISTS "${DSMN_TFLM_DIR}/tensorflow/lite/micro/micro_interpreter.h")
  message(FATAL_ERROR "${DSMN_TFLM_DIR} is not a TFLM tree (no tensorflow/lite/micro/micro_interpreter.h)")
endif()

set(DSMN_TFLM_INCLUDE_DIRS
  "${DSMN_TFLM_DIR}"
  "${DSMN_TFLM_DIR}/third_party/flatbuffers/include"
  "${DSMN_TFLM_DIR}/third_party/gemmlowp"
  "${DSMN_TFLM_DIR}/third_party/kissfft"
  "${DSMN_TFLM_DIR}/third_party/ruy"
  "${DSMN_TFLM_DIR}/third_party/cmsis_nn"
  "${DSMN_TFLM_DIR}/third_party/cmsis_nn/Include"
  "${DSMN_TFLM_DIR}/third_party/cmsis/CMSIS/Core/Include")
# As TFLM's release builds: no error strings, no asserts (NDEBUG), CMSIS-NN kernels.
set(DSMN_TFLM_DEFINITIONS
  NDEBUG TF_LITE_STATIC_MEMORY TF_LITE_STRIP_ERROR_STRINGS TF_LITE_USE_GLOBAL_CMATH_FUNCTIONS
  TF_LITE_USE_GLOBAL_MAX TF_LITE_USE_GLOBAL_MIN CMSIS_NN KERNELS_OPTIMIZED_FOR_SPEED)

if(DSMN_TFLM_SOURCES)
  add_library(tflm STATIC ${DSMN_TFLM_SOURCES})
  target_compile_options(tflm PRIVATE -O2 -Wno-unused-parameter -Wno-sign-compare
    $<$<COMPILE_LANGUAGE:CXX>:-fno-exceptions -fno-rtti -fno-threadsafe-statics -fno-unwind-tables
                              -fno-use-cxa-atexit>)
  # Nearly every TFLM source includes the flatbuffer schema (~3 MB preprocessed); parsing it
  # once instead of once per file cuts the library's compile time by about two thirds.
  target_precompile_headers(tflm PRIVATE
    "$<$<COMPILE_LANGUAGE:CXX>:${DSMN_TFLM_DIR}/tensorflow/lite/schema/schema_generated.h>"
    "$<$<COMPILE_LANGUAGE:CXX>:${DSMN_TFLM_DIR}/tensorflow/lite/micro/micro_interpreter.h>"
    "$<$<COMPILE_LANGUAGE:CXX>:${DSMN_TFLM_DIR}/tensorflow/lite/micro/kernels/kernel_util.h>")
elseif(DSMN_TFLM_LIB)
  if(NOT EXISTS "${DSMN_TFLM_LIB}")
    message(FATAL_ERROR "TFLM library ${DSMN_TFLM_LIB} is missing (dsmn-host build-firmware builds it)")
  endif()
  add_library(tflm STATIC IMPORTED)
  set_target_properties(tflm PROPERTIES IMPORTED_LOCATION "${DSMN_TFLM_LIB}")
else()
  message(FATAL_ERROR "set DSMN_TFLM_SOURCES (library build) or DSMN_TFLM_LIB (firmware link)")
endif()
target_include_directories(tflm INTERFACE ${DSMN_TFLM_INCLUDE_DIRS})
target_compile_definitions(tflm INTERFACE ${DSMN_TFLM_DEFINITIONS})
if(DSMN_TFLM_SOURCES)
  target_include_directories(tflm PRIVATE ${DSMN_TFLM_INCLUDE_DIRS})
  target_compile_definitions(tflm PRIVATE ${DSMN_TFLM_DEFINITIONS})
endif()

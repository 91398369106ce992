# TFLite-Micro as a static library `tflm`, from a tree made by TFLM's
#   tensorflow/lite/micro/tools/project_generation/create_tflm_tree.py \
#       --makefile_options="TARGET=cortex_m_generic OPTIMIZED_KERNEL_DIR=cmsis_nn TARGET_ARCH=<core>" DIR
# (that layout: tensorflow/, third_party/{flatbuffers,gemmlowp,kissfft,ruy,cmsis,cmsis_nn}/, signal/).
# The tree's kernels directory already holds the CMSIS-NN versions where they exist.
if(NOT DSMN_TFLM_DIR)
  message(FATAL_ERROR "--runtime tflm needs a TFLM source tree: pass --tflm-dir DIR "
                      "(made by create_tflm_tree.py with the cmsis_nn kernels)")
endif()
if(NOT EXISTS "${DSMN_TFLM_DIR}/tensorflow/lite/micro/micro_interpreter.h")
  message(FATAL_ERROR "${DSMN_TFLM_DIR} is not a TFLM tree (no tensorflow/lite/micro/micro_interpreter.h)")
endif()

file(GLOB_RECURSE TFLM_SOURCES CONFIGURE_DEPENDS
  "${DSMN_TFLM_DIR}/tensorflow/*.cc" "${DSMN_TFLM_DIR}/tensorflow/*.c"
  "${DSMN_TFLM_DIR}/signal/*.cc"
  "${DSMN_TFLM_DIR}/third_party/cmsis_nn/Source/*.c")
# Test and example mains that some trees carry would clash with ours.
list(FILTER TFLM_SOURCES EXCLUDE REGEX "(_test|/examples/|/benchmarks/|/tools/)")

add_library(tflm STATIC ${TFLM_SOURCES})
target_include_directories(tflm PUBLIC
  "${DSMN_TFLM_DIR}"
  "${DSMN_TFLM_DIR}/third_party/flatbuffers/include"
  "${DSMN_TFLM_DIR}/third_party/gemmlowp"
  "${DSMN_TFLM_DIR}/third_party/kissfft"
  "${DSMN_TFLM_DIR}/third_party/ruy"
  "${DSMN_TFLM_DIR}/third_party/cmsis_nn"
  "${DSMN_TFLM_DIR}/third_party/cmsis_nn/Include"
  "${DSMN_TFLM_DIR}/third_party/cmsis/CMSIS/Core/Include")
target_compile_definitions(tflm PUBLIC
  TF_LITE_STATIC_MEMORY TF_LITE_STRIP_ERROR_STRINGS TF_LITE_USE_GLOBAL_CMATH_FUNCTIONS
  TF_LITE_USE_GLOBAL_MAX TF_LITE_USE_GLOBAL_MIN CMSIS_NN KERNELS_OPTIMIZED_FOR_SPEED)
target_compile_options(tflm PRIVATE -O2 -Wno-unused-parameter -Wno-sign-compare
  $<$<COMPILE_LANGUAGE:CXX>:-fno-exceptions -fno-rtti -fno-threadsafe-statics -fno-unwind-tables>)

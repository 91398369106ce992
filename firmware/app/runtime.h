/* The one seam between the app loop and an inference engine: the native ahead-of-time graph
 * (runtime_native.c) or TFLite-Micro (runtime_tflm.cc). */
#ifndef DSMN_RUNTIME_H
#define DSMN_RUNTIME_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int runtime_init(void);                                  /* 0 on success */
int runtime_invoke(const int8_t *input, int8_t *output); /* 0 on success */
uint32_t runtime_arena_bytes(void);
/* Memory another stage may use while no inference runs (the front end's scratch); NULL and
 * *bytes = 0 if the runtime has none to lend. Its contents are lost at the next invoke. */
void *runtime_scratch(uint32_t *bytes);

/* What the last failed runtime_init/runtime_invoke said (e.g. TFLM's stage and TfLiteStatus),
 * for the protocol's ERROR text; "" when there is nothing to add. */
const char *runtime_error_text(void);

#ifdef __cplusplus
}
#endif

#endif

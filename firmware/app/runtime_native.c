/* Native runtime: the graph generated ahead of time by `dsmn_host.codegen` (dsmn_model.c),
 * whose activations live in its own statically sized arena. */
#include "runtime.h"

#include "dsmn_model.h"

static int init_status;

int runtime_init(void)
{
    init_status = dsmn_init();
    return init_status;
}

int runtime_invoke(const int8_t *input, int8_t *output) { return dsmn_invoke(input, output); }

uint32_t runtime_arena_bytes(void) { return (uint32_t)DSMN_ARENA_BYTES; }

void *runtime_scratch(uint32_t *bytes)
{
    *bytes = (uint32_t)DSMN_ARENA_BYTES;
    return dsmn_arena_base();
}

const char *runtime_error_text(void)
{
    /* DSMN_ERR_SCRATCH + k: step k of dsmn_model.c (memory.json's steps) reserves scratch that
     * differs from its kernel's *_scratch_bytes(): the generator and the kernels disagree. */
    return init_status >= DSMN_ERR_SCRATCH ? "dsmn_init: a step's scratch differs from its kernel's"
                                           : "";
}

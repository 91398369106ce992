/* Host runner for generated models: reads N inputs from a file, writes N outputs.
 * Usage: dsmn_runner IN.bin OUT.bin N */
#include <stdio.h>
#include <stdlib.h>

#include "dsmn_model.h"

#ifdef DSMN_TRACE
/* Every step's output tensors, appended to the file named by DSMN_TRACE_FILE as records of
 * int32 tensor index, int32 byte count, bytes (dsmn-host compare reads them). */
static FILE *trace_file;

void dsmn_trace_tensor(int tensor, const int8_t *data, int32_t bytes)
{
    const int32_t hdr[2] = {tensor, bytes};
    if (trace_file) {
        fwrite(hdr, sizeof hdr[0], 2, trace_file);
        fwrite(data, 1, (size_t)bytes, trace_file);
    }
}
#endif

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s IN.bin OUT.bin N\n", argv[0]);
        return 2;
    }
    FILE *fi = fopen(argv[1], "rb");
    FILE *fo = fopen(argv[2], "wb");
    if (!fi || !fo) {
        perror("open");
        return 2;
    }
    long n = strtol(argv[3], NULL, 10);
#ifdef DSMN_TRACE
    const char *trace_path = getenv("DSMN_TRACE_FILE");
    trace_file = trace_path ? fopen(trace_path, "wb") : NULL;
    if (!trace_file) {
        fprintf(stderr, "DSMN_TRACE build: set DSMN_TRACE_FILE to a writable path\n");
        return 2;
    }
#endif
    static int8_t in[DSMN_INPUT_BYTES];
    static int8_t out[DSMN_OUTPUT_BYTES];
    const int init = dsmn_init();
    if (init != 0) {
        fprintf(stderr, "dsmn_init failed: %d (DSMN_ERR_SCRATCH + step %d: the scratch the "
                "generator reserved differs from the kernel's *_scratch_bytes())\n", init,
                init - DSMN_ERR_SCRATCH);
        return 5;
    }
    for (long i = 0; i < n; i++) {
        if (fread(in, 1, sizeof in, fi) != sizeof in) {
            fprintf(stderr, "short input at item %ld\n", i);
            return 3;
        }
        if (dsmn_invoke(in, out) != 0) {
            fprintf(stderr, "dsmn_invoke failed at item %ld\n", i);
            return 4;
        }
        fwrite(out, 1, sizeof out, fo);
    }
    fclose(fi);
    fclose(fo);
#ifdef DSMN_TRACE
    fclose(trace_file);
#endif
    return 0;
}

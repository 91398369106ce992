/* Host runner for generated models: reads N inputs from a file, writes N outputs.
 * Usage: dsmn_runner IN.bin OUT.bin N */
#include <stdio.h>
#include <stdlib.h>

#include "dsmn_model.h"

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
    static int8_t in[DSMN_INPUT_BYTES];
    static int8_t out[DSMN_OUTPUT_BYTES];
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
    return 0;
}

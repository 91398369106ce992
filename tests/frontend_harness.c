/* Host build of firmware/frontend (tests/test_frontend.py): the board's front end, compiled
 * natively with the same CMSIS-DSP sources and flags.
 *
 * stdin: f32 scale, i32 zero point, u32 clip count, then per clip 44,100 little-endian int16.
 * stdout: per clip the 22,528-byte int8 input. Bytes are pushed in uneven pieces (odd sizes
 * split samples) the way UART chunks arrive. `frontend_harness --scratch` prints the scratch
 * size; `frontend_harness --log10` maps stdin's float32s through the front end's log10. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dsmn_frontend.h"

static unsigned char pcm[DSMN_FE_CLIP_SAMPLES * 2];
static int8_t out[DSMN_FE_OUTPUT_BYTES];

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--scratch") == 0) {
        printf("%zu\n", dsmn_fe_scratch_bytes());
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--log10") == 0) {
        float x;
        while (fread(&x, 4, 1, stdin) == 1) {
            x = dsmn_fe_log10(x);
            fwrite(&x, 4, 1, stdout);
        }
        return 0;
    }
    float scale;
    int zp;
    unsigned n;
    if (fread(&scale, 4, 1, stdin) != 1 || fread(&zp, 4, 1, stdin) != 1 || fread(&n, 4, 1, stdin) != 1)
        return 2;
    void *scratch = malloc(dsmn_fe_scratch_bytes());
    static const size_t pieces[] = {1, 511, 8, 1023, 2, 4095, 77, 2048};
    for (unsigned c = 0; c < n; c++) {
        if (fread(pcm, 1, sizeof pcm, stdin) != sizeof pcm)
            return 3;
        dsmn_fe_t fe;
        if (dsmn_fe_begin(&fe, scratch, dsmn_fe_scratch_bytes(), scale, zp) != 0)
            return 4;
        size_t pos = 0;
        for (unsigned k = c; pos < sizeof pcm; k++) {
            size_t take = pieces[k % 8];
            if (take > sizeof pcm - pos)
                take = sizeof pcm - pos;
            dsmn_fe_push_bytes(&fe, pcm + pos, take);
            pos += take;
        }
        if (dsmn_fe_end(&fe, out) != 0)
            return 5;
        fwrite(out, 1, sizeof out, stdout);
    }
    free(scratch);
    return 0;
}

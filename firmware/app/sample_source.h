/* The microphone seam (like micro_speech's audio_provider): the app takes int16 mono samples
 * at 44.1 kHz from a source and never asks where they come from. The UART source (main.c)
 * serves the AUDIO request that tests and `dsmn-host eval --input audio` use; a board's I2S or
 * PDM driver would be another source whose read() hands over its DMA buffer's samples. */
#ifndef DSMN_SAMPLE_SOURCE_H
#define DSMN_SAMPLE_SOURCE_H

#include <stddef.h>
#include <stdint.h>

typedef struct sample_source {
    const char *name;
    /* Up to max samples into dst; returns how many (0: none available now). */
    size_t (*read)(struct sample_source *src, int16_t *dst, size_t max);
} sample_source_t;

#endif

/* The depthwise fast path's body (internal; no include guard: dsmn_depthwise.c includes it
 * twice). DWF_WINDOW 0 is dw_fast (whole rows, any band of them: the code untiled plans
 * always ran), DWF_WINDOW 1 dw_fast_window (also any column window of the input, a mel strip
 * of a tiled plan; input columns are global like its rows). One text, two instances: taking
 * windows in the one instance cost the untiled model1 0.2 % more instructions on Cortex-M4
 * (register allocation of the tap loop; measured on qemu-an386: 47.86 M against 47.76 M). Expects DWF_FN, DWF_WINDOW and the dwf_* helpers
 * of dsmn_depthwise.c. */
static int DWF_FN(const dsmn_dw_prep *pp, const dsmn_conv_params *p, const dsmn_requant *q,
                  const dsmn_dims *id, const int8_t *in, const dsmn_dims *fd, const int8_t *filter,
                  const int32_t *bias, const dsmn_dims *od, int8_t *out)
{
    const int32_t C = od->c, kt = fd->h * fd->w;
    /* any band of whole rows (out_y0, od->h) is fine: input rows are global; any stride along
     * time (the blocks' 2x1 average pools run as stride-2 depthwise convolutions) */
    if (p->depth_multiplier != 1 || p->stride_h < 1 || p->stride_w != 1 || id->c != C || C > DWF_MAXC
#if DWF_WINDOW
        || kt > DWF_MAXT || fd->c != C) {
#else
        || od->w != id->w || p->out_x0 != 0 || kt > DWF_MAXT || fd->c != C) {
#endif
        return 0;
    }
    int8_t pad[DWF_CHUNK];
    for (int32_t j = 0; j < DWF_CHUNK; j++) {
        pad[j] = (int8_t)(-p->input_offset);
    }
    const int full = p->act_min == -128 && p->act_max == 127;
    dwf_ch ch[DWF_CHUNK];
    for (int32_t c0 = 0; c0 < C; c0 += DWF_CHUNK) {
        const int32_t cn = C - c0 < DWF_CHUNK ? C - c0 : DWF_CHUNK;
        int32_t dy[DWF_MAXT], dx[DWF_MAXT], tap[DWF_MAXT], nt = 0;
        if (pp) {
            /* the generator's taps and channel constants (dsmn_dw_prep) */
            const int32_t *tl = pp->taps + (c0 / DWF_CHUNK) * (1 + DWF_MAXT);
            nt = tl[0];
            for (int32_t t = 0; t < nt; t++) {
                tap[t] = tl[1 + t];
            }
            const int32_t *cc = pp->ch + 4 * c0;
            for (int32_t j = 0; j < cn; j++, cc += 4) {
                ch[j].base = cc[0];
                ch[j].mult = cc[1];
                ch[j].right = cc[2];
                ch[j].half = cc[3];
            }
        } else {
            for (int32_t t = 0; t < kt; t++) {
                int used = 0;
                for (int32_t j = 0; j < cn; j++) {
                    used |= filter[t * C + c0 + j] != 0;
                }
                if (used) {
                    tap[nt++] = t;
                }
            }
            for (int32_t j = 0; j < cn; j++) {
                const int32_t c = c0 + j;
                int32_t wsum = 0, wabs = 0;
                for (int32_t t = 0; t < kt; t++) {
                    const int32_t w = filter[t * C + c];
                    wsum += w;
                    wabs += w < 0 ? -w : w;
                }
                const int64_t base = (int64_t)(bias ? bias[c] : 0) + (int64_t)p->input_offset * wsum;
                if ((base < 0 ? -base : base) + 128ll * wabs >= (1ll << 29) || q->shift[c] >= 0 || q->shift[c] < -31) {
                    return 0; /* the caller's generic kernel then writes every output */
                }
                ch[j].base = (int32_t)base * 2;
                ch[j].mult = q->multiplier[c];
                ch[j].right = -q->shift[c];
                ch[j].half = 1 << (-q->shift[c] - 1);
            }
        }
        for (int32_t j = 0; j < cn; j++) {
            for (int32_t t = 0; t < nt; t++) {
                ch[j].w[t] = filter[tap[t] * C + c0 + j] * 2;
            }
        }
        for (int32_t t = 0; t < nt; t++) {
            dy[t] = (tap[t] / fd->w) * p->dilation_h - p->pad_h;
#if DWF_WINDOW
            dx[t] = (tap[t] % fd->w) * p->dilation_w - p->pad_w + p->out_x0;
#else
            dx[t] = (tap[t] % fd->w) * p->dilation_w - p->pad_w;
#endif
        }
        /* interior runs go channel by channel for the 5- and 2-tap bodies, while every
         * channel's shift lets the output offset ride in the rounding constant */
        int span_ok = nt == 5 || nt == 2;
        for (int32_t j = 0; j < cn; j++) {
            span_ok &= ch[j].right <= DSMN_FOLD_MAXRIGHT;
        }
        /* Dims and window origin in locals: the output stores are int8 and may alias any
         * struct the compiler would otherwise reload for every tap. */
        const int32_t ih = id->h, iw = id->w, oh = od->h, ow = od->w, y0 = p->out_y0;
        const int32_t sh = p->stride_h;
        for (int32_t b = 0; b < od->n; b++) {
            const int8_t *img = in + b * ih * iw * C + c0;
            for (int32_t oy = 0; oy < oh; oy++) {
                const int32_t yb = (oy + y0) * sh;
                /* the interior [xa, xb) of the row: every tap inside the image */
                int32_t xa = 0, xb = ow;
                for (int32_t t = 0; t < nt; t++) {
                    const int32_t iy = yb + dy[t];
                    if (iy < 0 || iy >= ih) {
                        xb = 0;
                    }
                    xa = -dx[t] > xa ? -dx[t] : xa;
                    xb = iw - dx[t] < xb ? iw - dx[t] : xb;
                }
                if (xb - xa < DWF_SPAN_MIN || !span_ok) {
                    xa = xb = ow;
                }
                for (int32_t ox = 0; ox < ow; ox++) {
                    if (ox == xa) {
                        const int8_t *tp[DWF_MAXT];
                        for (int32_t t = 0; t < nt; t++) {
                            tp[t] = img + ((yb + dy[t]) * iw + ox + dx[t]) * C;
                        }
                        int8_t *o = out + (((b * oh) + oy) * ow + ox) * C + c0;
                        if (nt == 5 && full) {
                            dwf_span5_full(tp, ch, cn, xb - xa, C, p->output_offset, o);
                        } else if (nt == 5) {
                            dwf_span5(tp, ch, cn, xb - xa, C, p->output_offset, p->act_min,
                                      p->act_max, o);
                        } else {
                            dwf_span2(tp, ch, cn, xb - xa, C, p->output_offset, p->act_min,
                                      p->act_max, o);
                        }
                        ox = xb - 1;
                        continue;
                    }
                    const int8_t *tp[DWF_MAXT];
                    for (int32_t t = 0; t < nt; t++) {
                        const int32_t iy = yb + dy[t], ix = ox + dx[t];
                        tp[t] = (iy < 0 || iy >= ih || ix < 0 || ix >= iw) ? pad
                                : img + (iy * iw + ix) * C;
                    }
                    int8_t *o = out + (((b * oh) + oy) * ow + ox) * C + c0;
                    if (nt == 5 && full) {
                        dwf_run5_full(tp, ch, cn, p->output_offset, o);
                    } else if (nt == 5) {
                        dwf_run5(tp, ch, cn, p->output_offset, p->act_min, p->act_max, o);
                    } else if (nt == 2) {
                        dwf_run2(tp, ch, cn, p->output_offset, p->act_min, p->act_max, o);
                    } else {
                        dwf_run(tp, nt, ch, cn, p->output_offset, p->act_min, p->act_max, o);
                    }
                }
            }
        }
    }
    return 1;
}


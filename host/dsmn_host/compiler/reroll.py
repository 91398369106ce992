"""Reroll pass: a tiled unit's band-by-band statements folded back into loops.

Tiling emits one kernel call per step per band per mel strip: model1's min plan is about 7,500
calls, 1.4 MB of C, 528 KB of Cortex-M4 code (more than a 512 KiB part's flash) and minutes of
cross-compilation. In the steady state of a unit every band repeats the same calls on the same
line buffers (ring rows are moved, not re-addressed), so its statements differ only in integer
literals that advance by a fixed step per band (row numbers, input addresses), and every strip
repeats the band schedule at other column offsets. This pass finds such runs and writes
`for` loops whose integer arguments are affine in the loop counter.

It is exact by construction: a run is folded only if every statement of every iteration is the
body's text with the counter substituted; anything irregular (pipeline fill and drain, a band
of other height, a strip of other width) stays as it was. Done on the statements' text, so it
holds for any kernel call the lowering emits, and the kernels compute exactly what they
computed unrolled.
"""

import re

# integer literals that are whole tokens (not part of an identifier, a float or a hex number),
# with a sign written against them (a row address below the arena: DSMN_AT(dsmn_arena, -4480))
_INT = re.compile(r"(?<![\w.])-?\d+(?![\w.])")
MAX_PERIOD = 400  # statements in one iteration: a few bands of a unit, or one strip of band loops


def _split(stmt):
    """(template with {} for each integer, the integers)."""
    ints = [int(m) for m in _INT.findall(stmt)]
    return _INT.sub("{}", stmt.replace("{", "{{").replace("}", "}}")), ints


def _affine_reps(vals, m):
    """How many of the `m` repetitions (vals[r] = the run's integers in repetition r) follow
    v0 + r * (v1 - v0) in every position."""
    if m < 2:
        return m
    v0, v1 = vals[0], vals[1]
    d = [b - a for a, b in zip(v0, v1)]
    for r in range(2, m):
        if any(v != a + r * s for v, a, s in zip(vals[r], v0, d)):
            return r
    return m


def _expr(v0, step, var):
    if step == 0:
        return str(v0)
    return f"({v0} + {step} * {var})" if step > 0 else f"({v0} - {-step} * {var})"


def reroll(stmts, var="k"):
    """`stmts` (one C statement or comment each, or earlier loops) with repeated runs folded
    into `for (int var = 0; ...)` loops; returns the new list (a loop is one multi-line item)."""
    split = [_split(s) for s in stmts]
    ids = {}
    tids = [ids.setdefault(t, len(ids)) for t, _ in split]
    n, out, i = len(stmts), [], 0
    while i < n:
        best = None   # (statements saved, period, repetitions)
        for p in range(1, min(MAX_PERIOD, (n - i) // 2) + 1):
            if tids[i] != tids[i + p] or tids[i:i + p] != tids[i + p:i + 2 * p]:
                continue
            m = 2
            while i + (m + 1) * p <= n and tids[i + m * p:i + (m + 1) * p] == tids[i:i + p]:
                m += 1
            reps = [[v for q in range(p) for v in split[i + r * p + q][1]] for r in range(m)]
            m = _affine_reps(reps, m)
            if m >= 2 and (best is None or p * (m - 1) > best[0]):
                best = (p * (m - 1), p, m)
        # a loop costs its header and counter: fold only what saves more than one statement
        if best is None or best[0] < 2:
            out.append(stmts[i])
            i += 1
            continue
        _, p, m = best
        body = []
        for q in range(p):
            tmpl, v0 = split[i + q]
            v1 = split[i + p + q][1]
            body.append(tmpl.format(*(_expr(a, b - a, var) for a, b in zip(v0, v1))))
        inner = "\n".join("    " + line for s in body for line in s.split("\n"))
        out.append(f"for (int {var} = 0; {var} < {m}; {var}++) {{\n{inner}\n}}")
        i += p * m
    return out


def statements(lines):
    """One C statement or comment per item, stripped: what the tiler's lines (some holding
    several calls) are to this pass."""
    return [s.strip() for line in lines for s in line.split("\n") if s.strip()]


def reroll_unit(lines, levels=4):
    """A unit's statements with bands folded (counter k0), then runs of those loops (a line
    buffer moved back every few bands, strips: k1, ...) while folding still shortens them."""
    stmts = statements(lines)
    for level in range(levels):
        folded = reroll(stmts, f"k{level}")
        if len(folded) == len(stmts):
            break
        stmts = folded
    return stmts

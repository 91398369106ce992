"""`dsmn-host eval`: stream clips to one or more boards over protocol v1 and measure them.

The stage's function (`run_eval`) and its CLI. The parts live in their own modules:
`journal` (the one durable state: results.jsonl), `boardsession` (one board behind one port),
`recovery` (what to do when a board resets or its port vanishes), `evalrun` (clips, the host
int8 reference and the run loop). The names below are this stage's interface.
"""

from __future__ import annotations

import json
from pathlib import Path

from dsmn_host.deploy import modelcard
from dsmn_host.link.boardsession import LIMIT_WINDOW, Board  # noqa: F401  (the stage's interface)
from dsmn_host.errors import DsmnError, ModelMismatch  # noqa: F401
from dsmn_host.link.evalrun import (INPUT_MODES, Clips, EvalRun, HostReference, _stratified, clip_pcm,  # noqa: F401
                               select_clips, systick_hz)
from dsmn_host.data.int8io import prepare_input, quantize  # noqa: F401  (the one quantizer, as evaluate.quantize)
from dsmn_host.link.journal import RESULTS, RUN_JSON, Journal, read_results  # noqa: F401


def run_eval(ports, *, source, split="fold1_evaluate", limit=None, stratify=False, card_path=None,
             out_dir="eval", resume=False, baud=921600, force=False, reference=True,
             reopen_timeout=30.0, log=print, input_mode="features", check_input=True, **board_kwargs):
    """Evaluate on the boards at `ports` (one thread each) into `out_dir`; returns the report."""
    from dsmn_host.link import report as report_mod

    ports = list(ports) if not isinstance(ports, str) else [ports]
    if not ports:
        raise DsmnError("give at least one --port")
    if len(set(ports)) != len(ports):
        raise DsmnError(f"the same port given twice: {ports}")
    out_dir = Path(out_dir)
    if card_path is None:
        from dsmn_host.target.firmware import DEFAULT_MODEL

        card_path = modelcard.card_paths(DEFAULT_MODEL)["json"]
    card = modelcard.read_card(card_path)
    clips = select_clips(source, split, limit, stratify)

    run_path = out_dir / RUN_JSON
    if resume and run_path.is_file():
        prev = json.loads(run_path.read_text())
        if prev.get("model_sha256") != card["sha256"]:
            raise DsmnError(f"{out_dir}: holds results of model {prev.get('model_sha256')}, not of "
                            f"{card['sha256']} ({card_path}); choose another --out")
    if input_mode not in INPUT_MODES:
        raise DsmnError(f"unknown --input {input_mode!r}; choose {' or '.join(INPUT_MODES)}")
    if resume and run_path.is_file():
        if json.loads(run_path.read_text()).get("input", "features") != input_mode:
            raise DsmnError(f"{out_dir}: holds a run with another --input; choose another --out")
    journal = Journal(out_dir / RESULTS, resume=resume)
    try:
        run = EvalRun(ports, clips, card, card_path, journal, out_dir, split=split, limit=limit,
                      stratify=stratify, baud=baud, force=force, reference=reference,
                      reopen_timeout=reopen_timeout, log=log, input_mode=input_mode,
                      check_input=check_input, board_kwargs=board_kwargs)
        return run.run(report_mod)
    finally:
        journal.close()



# ----------------------------------------------------------------------------------------------
# CLI


def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "eval",
        help="evaluate the int8 model on one or more boards over the serial link; write results and a report",
        description="Stream every clip of a split, preprocessed and quantized on the host exactly as in "
        "training, to the board(s) over protocol v1; append each RESULT to OUT/results.jsonl (fsynced, "
        "so --resume after a crash repeats and loses nothing); run the same int8 tensors through the "
        "TFLite-Micro Python interpreter for agreement; write OUT/report.json, report.md, confusion.png.",
        **style("dsmn-host eval --port /dev/ttyACM0 --data data/tau22-synth", "dsmn-host eval --port socket://127.0.0.1:5555 --cache data/tau22-synth.features --limit 100 --stratify --out build/eval"),
    )
    p.add_argument("--port", action="append", required=True, metavar="PORT",
                   help="serial port (/dev/ttyACM0, /dev/pts/N, socket://host:port); repeat for several boards")
    p.add_argument("--baud", type=int, default=921600, help="baud rate (default %(default)s)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", metavar="DATA", help="TAU22-layout data directory (features cached next to it)")
    src.add_argument("--cache", metavar="CACHE", help="feature cache directory (dsmn-host features)")
    p.add_argument("--split", default="fold1_evaluate", help="split to evaluate (default %(default)s)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N clips of the split")
    p.add_argument("--stratify", action="store_true", help="with --limit: spread the N clips over scenes and devices")
    p.add_argument("--model-card", metavar="CARD",
                   help="X.card.json of the model the board must run (default: the shipped models/model1)")
    p.add_argument("--out", metavar="REPORT_DIR", default="build/eval", help="output directory (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in REPORT_DIR, skipping clips already there")
    p.add_argument("--force", action="store_true", help="evaluate even if the board's model hash differs from the card")
    p.add_argument("--no-reference", action="store_true", help="skip the host TFLM reference (no agreement metrics)")
    p.add_argument("--input", choices=INPUT_MODES, default="features",
                   help="features: send the host's int8 input (default); audio: stream each clip's int16 PCM "
                        "and let the board's front end compute the input (firmware with the front end; "
                        "the report gains a front_end section)")
    p.add_argument("--no-input-check", action="store_true",
                   help="with --input audio: do not read back the board's int8 input (faster; no element agreement)")
    p.add_argument("--reopen-timeout", type=float, default=30.0, metavar="S",
                   help="how long to keep reopening a port that disappeared (default %(default)s s)")
    from dsmn_host.target.flash import add_flash_arguments

    add_flash_arguments(p, firmware_flag=True)
    p.set_defaults(func=_cmd_eval)

    r = subparsers.add_parser("eval-report", help="recompute the report of an eval directory from its results.jsonl",
                              description="Rewrite REPORT_DIR/report.json, report.md and confusion.png from "
                              "results.jsonl and run.json (no board needed).",
        **style("dsmn-host eval-report build/eval"))
    r.add_argument("report_dir", metavar="REPORT_DIR", help="directory of an earlier `dsmn-host eval`")
    r.set_defaults(func=_cmd_report)


def _cmd_eval(args):
    if args.limit is not None and args.limit <= 0:
        raise DsmnError("--limit must be positive")
    if args.stratify and args.limit is None:
        raise DsmnError("--stratify needs --limit N")
    if args.flash:
        from dsmn_host.target.flash import flash_for_eval

        flash_for_eval(args)
    rep = run_eval(args.port, source=args.data or args.cache, split=args.split, limit=args.limit,
                   stratify=args.stratify, card_path=args.model_card, out_dir=args.out, resume=args.resume,
                   baud=args.baud, force=args.force, reference=not args.no_reference,
                   reopen_timeout=args.reopen_timeout, input_mode=args.input,
                   check_input=not args.no_input_check,
                   log=lambda m: print(f"eval: {m}", flush=True))
    _print_summary(rep, args.out)


def _print_summary(rep, out_dir):
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    print(f"{rep['n_clips']} clips: accuracy {pct(rep['accuracy'])}, macro {pct(rep['macro_class_accuracy'])}, "
          f"log loss {rep['log_loss']:.3f}, 3-class {pct(rep['coarse_accuracy'])}; agreement with host int8 "
          f"top-1 {pct(rep['agreement_top1'])}, exact {pct(rep['agreement_exact'])}")
    fe = rep.get("front_end")
    if fe:
        eq = fe.get("elements_equal")
        print(f"front end: {'-' if eq is None else f'{100 * eq:.3f} %'} of input elements equal to the host's, "
              f"max |diff| {fe.get('max_abs_lsb', '-')} LSB; top-1 vs host features path "
              f"{pct(fe.get('top1_agreement_features'))}; {fe.get('frontend_instructions_mean') or 0:,.0f} "
              "instructions/clip")
    tp = rep.get("throughput")
    if tp:
        print(f"throughput {tp['clips_per_s']:.3f} clips/s"
              + (f" (link limit {tp['limit_clips_per_s']:.3f} clips/s)" if "limit_clips_per_s" in tp else ""))
    print(f"wrote {Path(out_dir) / 'report.md'}, report.json, confusion.png")


def _cmd_report(args):
    from dsmn_host.link import report as report_mod

    run_path = Path(args.report_dir) / RUN_JSON
    meta = json.loads(run_path.read_text()) if run_path.is_file() else {}
    rep = report_mod.write_report(args.report_dir, read_results(args.report_dir), meta)
    _print_summary(rep, args.report_dir)

"""Stage sequences the CLI runs: each stage module does one job, this layer chains them.

`dsmn-host convert` converts, writes the model card and verifies; the converter itself knows
nothing of cards or verification, so `convert` imports neither `modelcard`'s writer nor
`verify`, and the dependency arrows keep pointing down the pipeline (docs/architecture.md).
"""


def cmd_convert(args):
    """convert -> model card -> verify (unless --no-verify), as `dsmn-host convert` documents."""
    from dsmn_host.deploy import modelcard, verify
    from dsmn_host.deploy.convert import convert

    report = convert(args.onnx, args.calib, args.out, n_calib=args.n_calib, calib_split=args.calib_split,
                     strip=not args.keep_names, verbose=args.verbose)
    print(f"wrote {report['tflite']}: {report['model_bytes']} bytes (onnx2tf wrote {report['bytes_before_strip']}), "
          f"calibrated on {report['calibration_inputs']} {report['calibration_split']} inputs, "
          f"{report['convert_seconds']:.1f} s")
    card = modelcard.write_card(args.out, onnx_path=args.onnx, conversion=report)
    print(f"wrote {card['paths']['json']} and {card['paths']['md']}: TFLM arena {card['tflm_arena_bytes']} bytes, "
          f"{card['params']} params, {card['macs'] / 1e6:.2f} M MACs")
    if args.no_verify:
        return 0
    return verify.run_verify(args.out, onnx_path=args.onnx, data=args.verify_data or (None if str(args.calib).endswith(".npy") else args.calib),
                             board=args.board, ram_limit=args.ram_limit, flash_limit=args.flash_limit)

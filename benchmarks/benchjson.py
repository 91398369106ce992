"""The one way a benchmark script writes its result: the JSON file (directories made, written
whole then renamed, so an interrupted run leaves the previous result, not half a file) and the
same JSON on stdout. Not a benchmark itself."""

import json
from pathlib import Path


def write_result(result, out):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=1) + "\n"
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(text, end="")
    return out

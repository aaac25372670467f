#!/usr/bin/env python3
"""Refreshes keygate's embedded price table from LiteLLM's MIT-licensed model price list.

Downloads the newest `litellm` wheel from PyPI (pip, no dependencies), reads
`litellm/model_prices_and_context_window_backup.json` and the wheel's LICENSE, keeps the chat,
completion, embedding and responses models that have per-token prices, and writes:

  src/prices/litellm_prices.json   one model per line, sorted, only the price fields keygate uses
  src/prices/LICENSE-litellm       LiteLLM's licence notice, which must ship with the table

Run from anywhere: `python3 scripts/update_prices.py`. Prices are never typed by hand.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "src" / "prices"
PRICES_MEMBER = "litellm/model_prices_and_context_window_backup.json"
MODES = {"chat", "completion", "embedding", "responses"}
FIELDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
)


def download_wheel(into: pathlib.Path) -> pathlib.Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "litellm", "--no-deps",
         "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(into)],
        check=True,
    )
    wheels = sorted(into.glob("litellm-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"expected one litellm wheel in {into}, found {[w.name for w in wheels]}")
    return wheels[0]


def is_price(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def keep(entry) -> dict | None:
    """The fields keygate uses of one LiteLLM entry, or None if it is not a priced text model."""
    if not isinstance(entry, dict) or entry.get("mode") not in MODES:
        return None
    if not is_price(entry.get("input_cost_per_token")):
        return None
    kept = {field: entry[field] for field in FIELDS if is_price(entry.get(field))}
    kept.setdefault("output_cost_per_token", 0)
    return kept


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wheel_path = download_wheel(pathlib.Path(tmp))
        with zipfile.ZipFile(wheel_path) as wheel:
            names = wheel.namelist()
            dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
            version = dist_info[len("litellm-"):-len(".dist-info")]
            licenses = [n for n in names if n.startswith(dist_info + "/") and
                        n.rsplit("/", 1)[-1].upper().startswith("LICENSE")]
            if not licenses:
                sys.exit(f"no LICENSE in {dist_info} of {wheel_path.name}")
            license_text = wheel.read(licenses[0]).decode("utf-8")
            table = json.loads(wheel.read(PRICES_MEMBER))

    models = {}
    for name, entry in table.items():
        if name == "sample_spec":
            continue
        kept = keep(entry)
        if kept is not None:
            models[name] = kept
    if not models:
        sys.exit("no priced models found: has LiteLLM's format changed?")

    metadata = {
        "source": f"LiteLLM {PRICES_MEMBER} (https://github.com/BerriAI/litellm), MIT licence: see LICENSE-litellm",
        "litellm_version": version,
        "date": datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
        "modes": sorted(MODES),
        "models": len(models),
        "unit": "USD per token",
    }
    lines = [
        json.dumps(name) + ":" + json.dumps(models[name], separators=(",", ":"))
        for name in sorted(models)
    ]
    text = (
        "{\n\"metadata\":" + json.dumps(metadata, separators=(",", ":")) + ",\n\"models\":{\n"
        + ",\n".join(lines) + "\n}}\n"
    )
    json.loads(text)  # what keygate embeds must parse
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "litellm_prices.json").write_text(text, encoding="utf-8")
    (OUT_DIR / "LICENSE-litellm").write_text(
        f"The price table in litellm_prices.json is derived from LiteLLM {version}\n"
        f"({PRICES_MEMBER}), distributed under the following licence:\n\n{license_text}",
        encoding="utf-8",
    )
    print(f"wrote {len(models)} models from LiteLLM {version} to {OUT_DIR.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

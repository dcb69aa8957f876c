"""The original VISSL model zoo as data: what was published, how it is stored, which config builds it.

The catalogue lives in ``zoo.yaml`` next to this module (facts from VISSL's MODEL_ZOO.md and its
model-zoo benchmark configs). Nothing is downloaded: an entry names the file and its address, and
the user passes the downloaded file (``vissl-models extract CONFIG --weights FILE``).

    >>> from vissl_models import zoo
    >>> [e.name for e in zoo.list_models(method="swav", arch="resnet50_w2")]
    ['swav_rn50w2_in1k_400ep']
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

import yaml

from .config import ConfigError
from .pretrained import PretrainedCfg

TOP1_EVALS = ("linear", "knn")
_REQUIRED = ("name", "method", "arch", "trunk", "config", "description", "pretrain_dataset", "top1", "url", "layout")
_OPTIONAL = ("top1_eval", "eval_feature", "finetune_top1", "weights_init", "notes", "preprocessing")


@dataclass(frozen=True)
class ZooEntry:
    """One published checkpoint of the original model zoo (see ``zoo.yaml`` for the field meanings)."""

    name: str
    method: str
    arch: str
    trunk: Mapping[str, Any]
    config: str
    description: str
    pretrain_dataset: str
    top1: float
    url: str
    layout: str
    top1_eval: str = "linear"
    eval_feature: Optional[str] = None
    finetune_top1: Optional[float] = None
    weights_init: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    preprocessing: str = "imagenet"
    pretrained_cfg: Optional[PretrainedCfg] = field(default=None, compare=False)

    @property
    def checkpoint_file(self) -> str:
        """The published file name (the last part of ``url``)."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def config_path(self) -> str:
        """Path of the shipped config file that builds this model."""
        from .config import shipped_config_path

        return shipped_config_path(self.config)

    def load_config(self, overrides: Sequence[str] = ()):
        """The composed config of this entry (``vissl_models.load_config``), with ``overrides``."""
        from .config import load_config

        return load_config(self.config_path, overrides)

    def to_dict(self) -> Dict[str, Any]:
        """Plain data (JSON-ready), with ``checkpoint_file`` added."""
        out = asdict(self)
        out["trunk"] = _plain(self.trunk)
        out["weights_init"] = _plain(self.weights_init)
        out["pretrained_cfg"] = self.pretrained_cfg.to_dict() if self.pretrained_cfg else None
        out["checkpoint_file"] = self.checkpoint_file
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _presets(data: Mapping[str, Any], source: str) -> Dict[str, Mapping[str, Any]]:
    presets = data.get("preprocessing") or {"imagenet": {}}
    if not isinstance(presets, Mapping) or not all(isinstance(v, Mapping) for v in presets.values()):
        raise ValueError(f"{source}: preprocessing must map preset names to mappings, got {presets!r}")
    for name, values in presets.items():
        try:
            PretrainedCfg.from_dict(values)
        except (ConfigError, TypeError) as e:
            raise ValueError(f"{source}: preprocessing preset {name!r}: {e}") from None
    return dict(presets)


def parse_zoo(data: Mapping[str, Any], source: str = "zoo.yaml") -> Tuple[Dict[str, str], List[ZooEntry]]:
    """Validate the catalogue's data and return ``(layouts, entries)``; a bad entry raises ``ValueError``."""
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), list):
        raise ValueError(f"{source}: expected a mapping with a 'models' list")
    layouts = dict(data.get("layouts") or {})
    presets = _presets(data, source)
    entries: List[ZooEntry] = []
    seen: Dict[str, int] = {}
    for i, raw in enumerate(data["models"]):
        where = f"{source}: models[{i}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {raw!r}")
        where = f"{source}: model {raw.get('name', i)!r}"
        missing = [k for k in _REQUIRED if raw.get(k) in (None, "")]
        unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
        if missing or unknown:
            raise ValueError(f"{where}: missing fields {missing}, unknown fields {unknown}")
        name = str(raw["name"])
        if name in seen:
            raise ValueError(f"{where}: duplicate name (also models[{seen[name]}])")
        seen[name] = i
        if raw["layout"] not in layouts:
            raise ValueError(f"{where}: layout {raw['layout']!r} is not one of {sorted(layouts)}")
        top1_eval = raw.get("top1_eval", "linear")
        if top1_eval not in TOP1_EVALS:
            raise ValueError(f"{where}: top1_eval {top1_eval!r} is not one of {list(TOP1_EVALS)}")
        trunk = raw["trunk"]
        if not isinstance(trunk, Mapping) or not trunk.get("NAME"):
            raise ValueError(f"{where}: trunk must be a mapping with NAME, got {trunk!r}")
        if not str(raw["url"]).startswith("https://"):
            raise ValueError(f"{where}: url must be an https address, got {raw['url']!r}")
        weights_init = raw.get("weights_init") or {}
        if not isinstance(weights_init, Mapping):
            raise ValueError(f"{where}: weights_init must be a mapping, got {weights_init!r}")
        preprocessing = str(raw.get("preprocessing", "imagenet"))
        if preprocessing not in presets:
            raise ValueError(f"{where}: preprocessing {preprocessing!r} is not one of {sorted(presets)}")
        pretrained = PretrainedCfg.from_dict(
            dict(presets[preprocessing], top1=float(raw["top1"]), top1_eval=top1_eval), source=name
        )
        entries.append(
            ZooEntry(
                name=name,
                method=str(raw["method"]),
                arch=str(raw["arch"]),
                trunk=_plain(trunk),
                config=str(raw["config"]),
                description=str(raw["description"]),
                pretrain_dataset=str(raw["pretrain_dataset"]),
                top1=float(raw["top1"]),
                url=str(raw["url"]),
                layout=str(raw["layout"]),
                top1_eval=top1_eval,
                eval_feature=raw.get("eval_feature"),
                finetune_top1=None if raw.get("finetune_top1") is None else float(raw["finetune_top1"]),
                weights_init=_plain(weights_init),
                notes=" ".join(str(raw.get("notes") or "").split()),
                preprocessing=preprocessing,
                pretrained_cfg=pretrained,
            )
        )
    return layouts, entries


@lru_cache(maxsize=1)
def _catalogue() -> Tuple[Dict[str, str], Tuple[ZooEntry, ...]]:
    text = resources.files("vissl_models").joinpath("zoo.yaml").read_text(encoding="utf-8")
    layouts, entries = parse_zoo(yaml.safe_load(text))
    return layouts, tuple(entries)


def layouts() -> Dict[str, str]:
    """Checkpoint layout names used by the catalogue, with what each means."""
    return dict(_catalogue()[0])


def _norm(text: str) -> str:
    # "MoCo-v2", "moco_v2" and "mocov2" name the same thing; "+" is kept so NPID++ stays distinct.
    return re.sub(r"[^a-z0-9+]", "", text.lower())


def _check_filter(kind: str, value: str, known: Sequence[str]) -> None:
    known = sorted(set(known))
    if not any(_norm(value) == _norm(k) for k in known):
        near = difflib.get_close_matches(value, known, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise ValueError(f"no model zoo {kind} {value!r}{hint}; known: {', '.join(known)}")


def list_models(method: Optional[str] = None, arch: Optional[str] = None) -> List[ZooEntry]:
    """Catalogue entries, optionally only one method and/or architecture.

    Matching ignores case and punctuation (``MoCo-v2`` = ``moco_v2``). ``arch`` matches an
    architecture id (``resnet50_w2``) or a trunk name (``regnet``). A value that matches no entry
    at all raises ``ValueError`` listing the known ones.
    """
    entries = list(_catalogue()[1])
    if method:
        _check_filter("method", method, [e.method for e in entries])
        entries = [e for e in entries if _norm(e.method) == _norm(method)]
    if arch:
        everything = _catalogue()[1]
        _check_filter("architecture", arch, [e.arch for e in everything] + [e.trunk["NAME"] for e in everything])
        entries = [e for e in entries if _norm(arch) in (_norm(e.arch), _norm(e.trunk["NAME"]))]
    return entries


def get(name: str) -> ZooEntry:
    """The entry called ``name``; ``KeyError`` with close names when there is none."""
    for entry in _catalogue()[1]:
        if entry.name == name:
            return entry
    names = [e.name for e in _catalogue()[1]]
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(near)}?" if near else "; see `vissl-models zoo`"
    raise KeyError(f"no model zoo entry {name!r}{hint}")


# ---------------------------------------------------------------------------------------- command line
_COLUMNS = (("name", "name"), ("method", "method"), ("arch", "arch"), ("data", "pretrain_dataset"),
            ("top-1", "top1"), ("layout", "layout"), ("config", "config"))


def _cell(entry: ZooEntry, attr: str) -> str:
    if attr == "top1":
        return f"{entry.top1:.2f}" + (" knn" if entry.top1_eval == "knn" else "")
    return str(getattr(entry, attr))


def format_table(entries: Sequence[ZooEntry]) -> str:
    """A fixed-width text table of ``entries`` (one line per entry, a header first)."""
    rows = [[title for title, _ in _COLUMNS]] + [[_cell(e, attr) for _, attr in _COLUMNS] for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def add_zoo_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``zoo [--method M] [--arch A] [--json]`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "zoo", help="list the original model zoo's checkpoints: method, architecture, config, file, top-1",
        description="List the published VISSL checkpoints this package can build. Nothing is downloaded: "
        "fetch the file from its url and pass it with --weights.",
    )
    p.add_argument("--method", help="only this method (e.g. swav, simclr, moco_v2, dino)")
    p.add_argument("--arch", help="only this architecture (e.g. resnet50, resnet50_w2, vit_b16) or trunk (regnet)")
    p.add_argument("--json", action="store_true", help="print the entries as JSON (every field)")
    return p


def run_zoo(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Print the filtered catalogue as a table (or JSON with ``--json``); returns the exit code."""
    entries = list_models(method=getattr(args, "method", None), arch=getattr(args, "arch", None))
    if getattr(args, "json", False):
        json.dump([e.to_dict() for e in entries], out, indent=2)
        out.write("\n")
        return 0
    if not entries:
        print("no model zoo entries match these filters", file=out)
        return 0
    print(format_table(entries), file=out)
    count = f"{len(entries)} checkpoint{'s' if len(entries) != 1 else ''}"
    print(f"{count}; `vissl-models zoo --json` gives urls, layouts and notes", file=out)
    return 0

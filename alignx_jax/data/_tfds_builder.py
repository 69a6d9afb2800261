"""The TFDS dataset builder `alignx`: local AlignX files -> array_record, with no TensorFlow.

Configs: `train` (the hub's parquet shards) and one per benchmark. A config reads, from the
manual dir, the folder `<config name>/` (every *.parquet, *.json, *.jsonl inside, sorted) or the
file `<config name>.json` / `.jsonl` / `.parquet`. Each example keeps the record exactly (as JSON
text, so column names with spaces and benchmark-only fields survive), its index in the source
order, and a persona key for stratified subsets. Source order is kept (`disable_shuffling`): the
Grain pipeline shuffles.
"""
from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from alignx_jax.data._sources import iter_records, persona_key

_MANUAL_SUFFIXES = (".parquet", ".json", ".jsonl")


class AlignxConfig(tfds.core.BuilderConfig):
    """One source of AlignX-format records and the schema its records must meet."""

    def __init__(self, *, name: str, schema: str, description: str):
        super().__init__(name=name, description=description)
        self.schema = schema


class Alignx(tfds.core.GeneratorBasedBuilder):
    """AlignX training data and benchmarks from local files (manual_dir)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Records as JSON text, source index and persona key."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the files in the manual dir as `<config>/` folders or `<config>.json[l]` / `.parquet` files: "
        "train/ (the hub's JinaLeejnl/AlignX parquet shards), alignx_test, psoups, prism, uf_p_4."
    )
    BUILDER_CONFIGS = [
        AlignxConfig(name="train", schema="alignx", description="JinaLeejnl/AlignX training records (parquet)."),
        AlignxConfig(name="alignx_test", schema="benchmark", description="AlignX test split (JinaLeejnl/AlignX-test)."),
        AlignxConfig(name="psoups", schema="benchmark", description="P-Soups benchmark in AlignX format."),
        AlignxConfig(name="prism", schema="benchmark", description="PRISM benchmark in AlignX format."),
        AlignxConfig(name="uf_p_4", schema="benchmark", description="UF-P-4 benchmark in AlignX format."),
    ]
    # Nothing is downloaded, so there is no checksums file beside this code. Saying so also keeps
    # TFDS from locating the module through `importlib_resources`, which it uses but does not declare.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="AlignX personalized preference records (arXiv 2503.15463).",
            features=tfds.features.FeaturesDict(
                {"record": tfds.features.Text(), "index": np.int64, "persona": tfds.features.Text()}
            ),
            homepage="https://github.com/JinaLeejnl/AlignX",
            disable_shuffling=True,  # keep the source order (benchmarks are sorted by persona)
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {"train": self._generate_examples(source_files(pathlib.Path(dl_manager.manual_dir), self.builder_config.name))}

    def _generate_examples(self, files: Sequence[pathlib.Path]) -> Iterator[tuple[int, dict]]:
        index = 0
        for file in files:
            for record in iter_records(file, schema=self.builder_config.schema):
                yield index, {"record": json.dumps(record, ensure_ascii=False), "index": index, "persona": persona_key(record)}
                index += 1


def source_files(manual_dir: pathlib.Path, config: str) -> list[pathlib.Path]:
    """The files a config reads from the manual dir (see the module doc)."""
    folder = manual_dir / config
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.suffix in _MANUAL_SUFFIXES)
    else:
        files = [manual_dir / f"{config}{suffix}" for suffix in _MANUAL_SUFFIXES if (manual_dir / f"{config}{suffix}").is_file()]
    if not files:
        raise FileNotFoundError(f"config {config!r}: no {config}/ folder with records nor {config}.json[l]/.parquet in {manual_dir}")
    return files


def build(config: str, *, manual_dir: str | os.PathLike, data_dir: str | os.PathLike) -> Alignx:
    """Build (or reuse) the array_record files of `alignx/<config>` under `data_dir`."""
    builder = Alignx(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder


class TfdsRecords(Sequence):
    """Random access to the records of a built `alignx` config, decoded back to dicts (a Grain source)."""

    def __init__(self, config: str, *, data_dir: str | os.PathLike, split: str = "train"):
        builder = Alignx(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
        self._source = builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"TfdsRecords takes one integer index, got {type(index).__name__}")
        example = self._source[int(index)]
        return json.loads(example["record"])

"""Layer 1 data: record sources, TFDS builder `alignx`, Grain pipeline, persona rendering,
shared-prefix packing and synthetic users."""
from alignx_jax.data._packing import (
    CHOSEN,
    DEFAULT_SEQ_LENGTHS,
    PAD,
    PROMPT,
    REJECTED,
    OPTIONAL_ROW_KEYS,
    PAIR_KEYS,
    ROW_KEYS,
    EncodedPair,
    PackedBatch,
    PackingConfig,
    PackingStats,
    RowPacker,
    attention_mask,
    encode_pair,
    pack_rows,
    pack_stream,
    pack_two_rows,
    pair_sums,
    prompt_ids_and_slots,
)
from alignx_jax.data._persona_items import (
    DEMO_ITEM,
    PAIR_ITEM,
    UGC_ITEM,
    VIEWS,
    PersonaItems,
    cap_history,
    pad_items,
    persona_items,
)
from alignx_jax.data._pipeline import (PackedBatchDataset, PromptFormat, encode_record, packed_batches, unit_fits,
                                        unit_too_long)
from alignx_jax.data._profile_first import PROFILE_FIRST_HEADER, profile_first, profile_statement
from alignx_jax.data._rendering import (
    SOFT_SLOT,
    ChatPrompt,
    History,
    chat_text,
    full_history,
    ica_eval_prompt,
    ica_train_prompt,
    pair_section,
    pba_prompt,
    record_profile,
    reference_prompt,
    sample_history,
    soft_profile,
    ugc_section,
)
from alignx_jax.data._sources import (
    RECORD_SUFFIXES,
    LoadReport,
    RecordFile,
    hub_parquet_schema,
    iter_json_records,
    iter_parquet_records,
    iter_records,
    load_records,
    persona_key,
    write_records,
)
from alignx_jax.data._splits import first_per_persona, heldout_split, persona_groups, take_evenly
from alignx_jax.data._synthetic import (
    EXTRA_TOPIC_DIMENSIONS,
    LENGTH_DIMENSION,
    STYLE_DIMENSIONS,
    response_styles,
    style_dimensions,
    synthetic_records,
)
from alignx_jax.data._twins import twin_of, twin_slots, twin_units

_TFDS_NAMES = ("Alignx", "TfdsRecords", "build_tfds")


def __getattr__(name):
    # TFDS loads in about a second; only code that builds or reads the array_record files pays for it.
    if name in _TFDS_NAMES:
        from alignx_jax.data import _tfds_builder

        return {"Alignx": _tfds_builder.Alignx, "TfdsRecords": _tfds_builder.TfdsRecords,
                "build_tfds": _tfds_builder.build}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CHOSEN", "DEFAULT_SEQ_LENGTHS", "OPTIONAL_ROW_KEYS", "PAD", "PAIR_KEYS", "PROMPT", "REJECTED", "ROW_KEYS", "EncodedPair", "PackedBatch", "PackingConfig",
    "PackingStats", "RowPacker", "attention_mask", "encode_pair", "pack_rows", "pack_stream", "pack_two_rows", "pair_sums",
    "prompt_ids_and_slots",
    "DEMO_ITEM", "PAIR_ITEM", "UGC_ITEM", "VIEWS", "PersonaItems", "cap_history", "pad_items", "persona_items",
    "PackedBatchDataset", "PromptFormat", "encode_record", "packed_batches", "unit_fits", "unit_too_long",
    "ChatPrompt", "History", "chat_text", "full_history", "ica_eval_prompt", "ica_train_prompt", "pair_section",
    "pba_prompt", "record_profile", "reference_prompt", "sample_history", "SOFT_SLOT", "soft_profile", "ugc_section",
    "RECORD_SUFFIXES", "LoadReport", "RecordFile", "hub_parquet_schema", "iter_json_records", "iter_parquet_records", "iter_records", "load_records",
    "persona_key", "write_records", "first_per_persona", "heldout_split", "persona_groups", "take_evenly",
    "twin_of", "twin_slots", "twin_units", "PROFILE_FIRST_HEADER", "profile_first", "profile_statement",
    "EXTRA_TOPIC_DIMENSIONS", "LENGTH_DIMENSION", "STYLE_DIMENSIONS", "response_styles", "style_dimensions", "synthetic_records", "Alignx", "TfdsRecords", "build_tfds",
]

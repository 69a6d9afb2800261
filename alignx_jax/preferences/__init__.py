"""Layer 0: the AlignX preference space (90 dimensions, the official profile rule) and record schema."""
from alignx_jax.preferences._schema import (
    CHOSEN,
    DEMOGRAPHICS,
    DIRECTION,
    GROUND_TRUTH_PERSONA,
    PAIRS,
    PROFILE,
    PROMPT,
    REJECTED,
    SCHEMAS,
    TRAINING_FIELDS,
    UGC,
    RecordError,
    validate_record,
)
from alignx_jax.preferences._space import (
    NEGATIVE,
    NEUTRAL,
    NUM_DIMENSIONS,
    POSITIVE,
    Dimension,
    Thresholds,
    binarize,
    dimensions,
    golden_profile,
    lookup,
    official_profile,
    official_profile_direction,
    parse_profile,
    profile_text,
    thresholds,
    vocabulary_path,
)

__all__ = [
    "CHOSEN", "DEMOGRAPHICS", "DIRECTION", "GROUND_TRUTH_PERSONA", "PAIRS", "PROFILE", "PROMPT", "REJECTED",
    "SCHEMAS", "TRAINING_FIELDS", "UGC", "RecordError", "validate_record",
    "NEGATIVE", "NEUTRAL", "NUM_DIMENSIONS", "POSITIVE", "Dimension", "Thresholds", "binarize", "dimensions",
    "golden_profile", "lookup", "official_profile", "official_profile_direction", "parse_profile",
    "profile_text", "thresholds", "vocabulary_path",
]

"""Layer 3: the persona encoder and the preference bridge (PBA), pure functions of params and arrays.

    features = item_features(backbone_slice(params, l), config.replace(num_layers=l), tokens, mask)  # [B, M, 2D]
    persona  = pool_items(p["encoder"], features, item_types, item_mask)                              # [B, P]
    logits   = bridge_logits(p["bridge"], persona)                                                    # [B, 90, 3]
    dist     = softmax(logits)  |  official_distribution(item_directions, item_mask)  |  golden_distribution(d)
    profile  = map_profile(dist[0])                     # the official text profile of the MAP directions
    tokens   = soft_tokens(p["soft"]["table"], dist)    # [B, K, D]: what `models.scoring` puts in the soft slots
    dist     = set_preferences(dist, dims, values)      # a user's edit (controllability)

Classes per dimension: 0 negative, 1 neutral, 2 positive (direction values 0, 0.5, 1).

The bridge as one slice: the persona tables and the one mode switch (`persona_arrays`,
`distributions`; _persona.py), training's set-up, pretraining, held-out figures, probes and saving
(`setup`, `BridgeSetup`, `probes`, `saved_bridge`; _training.py), and `PersonaBridge`, a saved bridge
applied to new personas (`alignx eval --mode pba_soft`, `alignx generate`). Training's step hook is
`train/bridge.py`.
"""
from alignx_jax.bridge._io import CONDITIONINGS, FOLDER, MODES, SavedBridge, describe, has_bridge, load, save
from alignx_jax.bridge._metrics import bridge_report, macro_f1, majority_classes, marked_dimensions
from alignx_jax.bridge._networks import (
    DEMO,
    ITEM_TYPES,
    MAX_ITEMS,
    PAIR,
    UGC,
    VIEWS,
    BridgeConfig,
    backbone_slice,
    bridge_logits,
    class_balanced_ce,
    class_weights,
    encode_items,
    encode_personas,
    encode_views,
    init_params,
    item_features,
    label_table,
    learned_distribution,
    pool_items,
)
from alignx_jax.bridge._persona import (
    PersonaBridge,
    PersonaTable,
    distributions,
    draw_items,
    edited,
    generate_with_soft_tokens,
    neutral_distribution,
    persona_arrays,
    persona_table,
    table_distributions,
)
from alignx_jax.bridge._training import (
    BridgeSetup,
    Probe,
    current_params,
    heldout_soft_tokens,
    macro_f1_report,
    pretrain,
    probe_records,
    probe_soft_tokens,
    probes,
    profile_label_ids,
    profiled,
    records_soft_tokens,
    saved_bridge,
    setup,
    summary_fields,
    text_records,
)
from alignx_jax.bridge._rules import (
    CLASS_VALUES,
    NEGATIVE,
    NEUTRAL,
    NUM_CLASSES,
    POSITIVE,
    direction_classes,
    direction_distribution,
    edits_from_labels,
    golden_distribution,
    map_direction,
    map_profile,
    official_direction,
    official_distribution,
    set_preferences,
    soft_tokens,
)

__all__ = [
    "CONDITIONINGS", "FOLDER", "MODES", "SavedBridge", "describe", "has_bridge", "load", "save",
    "bridge_report", "macro_f1", "majority_classes", "marked_dimensions",
    "DEMO", "ITEM_TYPES", "MAX_ITEMS", "PAIR", "UGC", "VIEWS", "BridgeConfig", "backbone_slice", "bridge_logits",
    "class_balanced_ce", "class_weights", "encode_items", "encode_personas", "encode_views", "init_params", "item_features",
    "label_table", "learned_distribution", "pool_items",
    "CLASS_VALUES", "NEGATIVE", "NEUTRAL", "NUM_CLASSES", "POSITIVE", "direction_classes", "direction_distribution",
    "edits_from_labels", "golden_distribution", "map_direction", "map_profile", "official_direction",
    "official_distribution", "set_preferences", "soft_tokens",
    "PersonaBridge", "PersonaTable", "distributions", "draw_items", "edited", "generate_with_soft_tokens",
    "neutral_distribution", "persona_arrays", "persona_table", "table_distributions",
    "BridgeSetup", "Probe", "current_params", "heldout_soft_tokens", "macro_f1_report", "pretrain", "probe_records",
    "probe_soft_tokens", "probes", "profile_label_ids", "profiled", "records_soft_tokens", "saved_bridge", "setup",
    "summary_fields",
    "text_records",
]

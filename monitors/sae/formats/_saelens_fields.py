"""Every field SAELens writes in ``cfg.json``, sorted into what the reader implements and what
is metadata (accepted by name, no effect on what the SAE computes).

Sources: ``sae_lens`` 6.54 ``SAEConfig`` (``d_in``, ``d_sae``, ``dtype``, ``device``,
``apply_b_dec_to_input``, ``normalize_activations``, ``reshape_activations``, ``metadata``),
``TopKSAEConfig`` (``k``, ``rescale_acts_by_decoder_norm``), ``StandardSAEConfig``,
``JumpReLUSAEConfig`` and ``GatedSAEConfig`` (no fields of their own), the ``SAEMetadata`` keys
the training runner and the pretrained loaders set, and the pre-6.0 flat layout that
``handle_pre_6_0_config`` converts. Anything else is refused by name: a new SAELens field may
change the encoding, and ignoring it would be a guess.
"""

from __future__ import annotations

__all__ = ["ARCH_FIELDS", "LEGACY_FIELDS", "METADATA_FIELDS", "V6_FIELDS"]

V6_FIELDS = frozenset({
    "architecture",
    "d_in",
    "d_sae",
    "dtype",  # storage dtype; load_sae's dtype= decides the compute dtype
    "device",  # where SAELens would put it; load_sae's device= decides
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "metadata",
    "meta",  # the metadata object's name in some 6.x releases
})
"""Top-level fields of a v6 ``cfg.json`` shared by every architecture."""

ARCH_FIELDS: dict[str, frozenset[str]] = {
    "standard": frozenset(),
    "jumprelu": frozenset(),
    "gated": frozenset(),
    "topk": frozenset({"k", "rescale_acts_by_decoder_norm"}),
}
"""Fields only one architecture's config class has."""

METADATA_FIELDS = frozenset({
    "sae_lens_version",
    "sae_lens_training_version",
    "model_name",
    "model_class_name",
    "model_from_pretrained_kwargs",  # how TransformerLens should load the model
    "hook_name",
    "hook_layer",
    "hook_head_index",  # implemented: must be null (one-head SAEs are refused)
    "context_size",
    "prepend_bos",
    "seqpos_slice",  # positions trained on; inference encodes every row it is given
    "dataset_path",
    "dataset_trust_remote_code",
    "exclude_special_tokens",
    "neuronpedia_id",
    "training_architecture",
    "training_architecture_details",  # training-only settings (losses, init, aux-k)
    "written_by",  # latentguard's own writer
})
"""Keys of ``metadata``: how the SAE was trained and on what, none of which changes encode."""

LEGACY_FIELDS = frozenset(
    (V6_FIELDS - {"metadata", "meta"})
    | ARCH_FIELDS["topk"]
    | METADATA_FIELDS
    | {
        "hook_point",  # pre-6.0 name of hook_name
        "hook_point_layer",
        "hook_point_head_index",
        "activation_fn_str",  # implemented: relu, or topk with activation_fn_kwargs.k
        "activation_fn",
        "activation_fn_kwargs",
        "finetuning_scaling_factor",  # implemented: must be false (or the tensor all ones)
    }
)
"""Top-level fields of a pre-6.0 (flat) ``cfg.json``."""

import pytest

from latentguard.monitors.sae import HookSite, parse_hook_name


@pytest.mark.parametrize(
    ("name", "want"),
    [
        ("blocks.12.hook_resid_post", HookSite(12, "resid_post")),
        ("blocks.0.hook_resid_pre", HookSite(-1, "resid_post")),
        ("blocks.5.hook_resid_pre", HookSite(4, "resid_post")),
        ("blocks.3.hook_mlp_out", HookSite(3, "mlp_out")),
        ("blocks.3.hook_resid_mid", HookSite(3, "resid_mid")),
        ("model.layers.12", HookSite(12, "resid_post")),
        ("layers.7", HookSite(7, "resid_post")),
        ("layers.7.mlp", HookSite(7, "mlp_out")),
        ("model.layers.2.self_attn", HookSite(2, "attn_out")),
        ("transformer.h.4", HookSite(4, "resid_post")),
        ("gpt_neox.layers.9", HookSite(9, "resid_post")),
        ("hook_embed", HookSite(-1, "resid_post")),
    ],
)
def test_parse_hook_name(name, want):
    assert parse_hook_name(name) == want


# hook_z is each head's value mix before the output projection: no site the monitor reads
# (it was once taken for attn_out, a different vector).
@pytest.mark.parametrize("name", ["", "blocks.x.hook_resid_post", "layers", "blocks.1.hook_foo",
                                  "something.else.12", "blocks.3.attn.hook_z"])
def test_unknown_hook_names(name):
    assert parse_hook_name(name) is None

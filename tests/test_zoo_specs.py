import pytest

from vital_fv.errors import VitalError
from vital_fv.zoo import discover_last_hidden, last_linear, load_model


def test_unit_presets_take_the_preset_layers_below_the_unit():
    from vital_fv.zoo import unit_preset

    spec = load_model("resnet50", random_init=True)
    up = unit_preset(spec, "layer4.2", with_predecessor=False)  # the paper's rule (SPEC §4)
    assert up.layers == ("conv1", "layer1", "layer2", "layer3") and up.weights == (0.1, 1.0, 1.0, 1.0)
    assert up.tv == up.l2 == 3e-6
    assert unit_preset(spec, "layer3.5", with_predecessor=False).layers == ("conv1", "layer1", "layer2")
    # default: the block just before the unit joins, in execution order
    assert unit_preset(spec, "layer4.2").layers == ("conv1", "layer1", "layer2", "layer3", "layer4.1")
    assert unit_preset(spec, "layer3.5").layers == ("conv1", "layer1", "layer2", "layer3.4")
    assert unit_preset(spec, "layer4.0").layers == ("conv1", "layer1", "layer2", "layer3")  # first of its stage
    with pytest.raises(VitalError, match="no preset layer of resnet50 runs below 'conv1'"):
        unit_preset(spec, "conv1")
    lite = load_model("efficientnet_lite0")
    assert unit_preset(lite, "blocks.5.2").layers == ("conv_stem", "blocks.1", "blocks.2", "blocks.4", "blocks.5.1")
    vit = load_model("vit_l_16", random_init=True)
    layers = unit_preset(vit, "encoder.layers.encoder_layer_20").layers
    assert layers[-1] == "encoder.layers.encoder_layer_19"


def test_architecture_facts_of_lite0_and_of_a_plain_module(lite0, tiny_spec):
    assert lite0.arch.family == "efficientnet" and lite0.arch.last_hidden == "bn2" and lite0.arch.head == "classifier"
    assert discover_last_hidden(lite0.module, 224) == "bn2" and last_linear(lite0.module) == "classifier"
    names = dict(lite0.module.named_modules())
    assert lite0.arch.stem in names and all(s in names for s in lite0.arch.stages)
    assert tiny_spec.arch.family == "generic" and tiny_spec.arch.last_hidden is None  # found when asked
    assert tiny_spec.last_hidden_layer() == "act2" and tiny_spec.classifier_head() is tiny_spec.module.fc

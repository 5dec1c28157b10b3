import pytest
import torch
from bundle.initialization import describe_architecture, initialize_encoder, load_weights
from bundle.networks import TripletEncoderNet, build_encoder, segmentation_unet


@pytest.fixture
def encoder_file(tmp_path):
    torch.manual_seed(1)
    encoder = TripletEncoderNet(backbone="resnet18", embedding_dim=8).encoder
    path = tmp_path / "pretrained_encoder.pt"
    torch.save(encoder.state_dict(), path)
    return path, encoder.state_dict()


def test_ssl_init_copies_every_encoder_tensor_and_leaves_decoder_random(encoder_file):
    path, state = encoder_file
    torch.manual_seed(2)
    scratch = initialize_encoder(segmentation_unet("resnet18"), "scratch")
    torch.manual_seed(2)
    net = initialize_encoder(segmentation_unet("resnet18"), "ssl", path)
    for name, tensor in net.encoder.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    for (name, a), b in zip(net.decoder.state_dict().items(), scratch.decoder.state_dict().values()):
        assert torch.equal(a, b), name  # same seed: decoder untouched by the encoder load
    assert not torch.equal(scratch.encoder.conv1.weight, state["conv1.weight"])


def test_imagenet_init_drops_the_classifier(tmp_path):
    state = build_encoder("resnet18").state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(state, path)
    net = initialize_encoder(segmentation_unet("resnet18"), "imagenet", path)
    assert torch.equal(net.encoder.conv1.weight, state["conv1.weight"])


def test_other_backbone_is_an_error_naming_both(encoder_file):
    path, _ = encoder_file
    with pytest.raises(ValueError, match=r"pretrained_encoder\.pt.*resnet18.*'resnet34'"):
        initialize_encoder(segmentation_unet("resnet34"), "ssl", path)


@pytest.mark.parametrize("name", ["resnet10", "resnet18", "resnet34", "resnet50", "resnet101"])
def test_describe_architecture(name):
    assert describe_architecture(build_encoder(name).state_dict()) == name


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(1), "payload": object()}, path)
    with pytest.raises(ValueError, match=r"evil\.pt: holds Python objects other than tensors"):
        load_weights(path)


def test_bad_modes_and_missing_files():
    with pytest.raises(ValueError, match="init must be one of"):
        initialize_encoder(segmentation_unet("resnet18"), "random")
    with pytest.raises(ValueError, match="needs a weights file"):
        initialize_encoder(segmentation_unet("resnet18"), "ssl", None)
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        initialize_encoder(segmentation_unet("resnet18"), "ssl", "/nowhere.pt")

import pytest
import torch
from bundle.engine import PrepareTripletBatch
from bundle.networks import TripletEncoderNet, segmentation_unet, trainable_parameters


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return TripletEncoderNet(backbone="resnet18", embedding_dim=16).eval()


def test_output_shapes(net):
    z, count = net(torch.rand(6, 3, 64, 64))
    assert z.shape == (6, 16) and count.shape == (6,)


@pytest.mark.parametrize("variant", [{}, {"full_resolution_skip": True}, {"input_downsample": 2}])
def test_encoder_loads_into_flexible_unet_with_strict_keys(net, variant):
    unet = segmentation_unet(backbone="resnet18", **variant)
    result = unet.encoder.load_state_dict(net.encoder.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, tensor in net.encoder.state_dict().items():
        assert torch.equal(unet.encoder.state_dict()[name], tensor)


def test_full_resolution_stem_feeds_the_last_decoder_block():
    torch.manual_seed(0)
    unet = segmentation_unet(backbone="resnet18", full_resolution_skip=True).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        before = unet(x)
        for parameter in unet.full_resolution_stem.parameters():
            parameter.zero_()
        after = unet(x)
    assert before.shape == (2, 3, 64, 64)
    assert not torch.allclose(before, after)


def test_full_resolution_unet_traces_to_the_same_output():
    """The bundle exports with ``ckpt_export --use_trace`` at one input size (MONAI's ResNet-18
    shortcut fixes its padding when traced); a traced model must match eager on new inputs."""
    torch.manual_seed(0)
    unet = segmentation_unet(backbone="resnet18", full_resolution_skip=True).eval()
    x, other = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(unet, x)
        torch.testing.assert_close(traced(other), unet(other), atol=1e-4, rtol=1e-4)


def test_a_downsampled_unet_runs_the_plain_unet_on_the_reduced_image_at_the_inputs_size():
    """input_downsample 2: area average 2x2, the same U-Net, logits upsampled back (bilinear)."""
    torch.manual_seed(0)
    reduced_unet = segmentation_unet(backbone="resnet10", input_downsample=2).eval()
    plain = segmentation_unet(backbone="resnet10").eval()
    result = plain.load_state_dict(reduced_unet.state_dict(), strict=False)
    assert result.unexpected_keys == ["input_downsample"] and not result.missing_keys
    x = torch.rand(2, 3, 128, 192)
    with torch.no_grad():
        out = reduced_unet(x)
        expected = torch.nn.functional.interpolate(
            plain(torch.nn.functional.avg_pool2d(x, 2)), size=(128, 192), mode="bilinear", align_corners=False
        )
    assert out.shape == (2, 3, 128, 192)
    torch.testing.assert_close(out, expected)
    assert int(reduced_unet.state_dict()["input_downsample"]) == 2


def test_a_downsampled_unet_traces_to_the_same_output():
    """``ckpt_export --use_trace`` exports at the sliding window's size; pooling and upsampling trace."""
    torch.manual_seed(0)
    unet = segmentation_unet(backbone="resnet18", input_downsample=2).eval()
    with torch.no_grad():
        traced = torch.jit.trace(unet, torch.rand(1, 3, 128, 128))
        other = torch.rand(1, 3, 128, 128)
        torch.testing.assert_close(traced(other), unet(other), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"input_downsample": 0}, "integer >= 2"),
        ({"input_downsample": 1.5}, "integer >= 2"),
        ({"input_downsample": 2, "full_resolution_skip": True}, "exclude each other"),
    ],
)
def test_bad_input_downsample_is_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        segmentation_unet(backbone="resnet10", **arguments)


def test_count_map_pools_to_the_count_head(net):
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        _, count = net(x)
        density = net.count_map(x)
    assert density.shape == (2, 3, 3)
    assert torch.allclose(density.mean(dim=(1, 2)), count, atol=1e-5)


def test_one_batched_pass_embeds_anchor_positive_negative(net):
    batch = {key: torch.rand(2, 3, 64, 64) for key in ("anchor", "positive", "negative")}
    inputs, target = PrepareTripletBatch()(batch, device="cpu")
    assert target is None and inputs.shape == (6, 3, 64, 64)
    assert torch.equal(inputs[2:4], batch["positive"])
    calls = []
    handle = net.encoder.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        net(inputs)
    handle.remove()
    assert len(calls) == 1


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="unknown backbone"):
        TripletEncoderNet(backbone="resnet7")


def test_frozen_layers_leave_the_optimiser_and_stop_their_gradients():
    net = TripletEncoderNet(backbone="resnet10", embedding_dim=8)
    trainable = trainable_parameters(net, ["encoder.conv1.", "encoder.bn1."])
    frozen = [p for n, p in net.named_parameters() if n.startswith(("encoder.conv1.", "encoder.bn1."))]
    assert len(frozen) == 3 and all(not p.requires_grad for p in frozen)
    assert {id(p) for p in trainable} == {id(p) for p in net.parameters()} - {id(p) for p in frozen}
    wrapped = torch.nn.Module()
    wrapped.module = TripletEncoderNet(backbone="resnet10", embedding_dim=8)  # as DistributedDataParallel holds it
    assert len(trainable_parameters(wrapped, ["encoder.conv1."])) == len(list(wrapped.module.parameters())) - 1


def test_a_frozen_prefix_that_names_nothing_is_refused():
    with pytest.raises(ValueError, match="frozen_layers \\['encoder.cnv1.'\\] name no parameter"):
        trainable_parameters(TripletEncoderNet(backbone="resnet10", embedding_dim=8), ["encoder.cnv1."])

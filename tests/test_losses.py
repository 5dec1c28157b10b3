import pytest
import torch
from bundle.losses import InstanceAwareLoss, triplet_statistics


def _pred():
    # B = 2 triplets, E = 2; rows: anchors, positives, negatives.
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.5, 0.0], [1.0, 0.0]])
    count = torch.tensor([0.0, 0.0, 2.0, 0.5, 1.5, 1.0])
    return z, count


def test_terms_match_hand_computed_values():
    # d(za,zp) = [1, 5], d(za,zn) = [0.25, 0] -> triplet = mean(max(0, [1.75, 6])) = 3.875
    # f(zp) = [2, 0.5], f(zn) = [1.5, 1] -> ranking = mean(max(0, [1.5-2+1, 1-0.5+1])) = mean([0.5, 1.5]) = 1
    terms = InstanceAwareLoss().terms(_pred())
    assert terms["l_st"].item() == pytest.approx(3.875)
    assert terms["l_cr"].item() == pytest.approx(1.0)
    assert terms["loss"].item() == pytest.approx(4.875)


def test_weights_give_the_ablations():
    assert InstanceAwareLoss(w_cr=0.0)(_pred()).item() == pytest.approx(3.875)
    assert InstanceAwareLoss(w_st=0.0)(_pred()).item() == pytest.approx(1.0)
    assert InstanceAwareLoss(w_st=2.0, w_cr=0.5)(_pred()).item() == pytest.approx(8.25)


def test_margins_are_used():
    terms = InstanceAwareLoss(margin_triplet=0.5, margin_rank=0.0).terms(_pred())
    assert terms["l_st"].item() == pytest.approx(3.375)
    assert terms["l_cr"].item() == pytest.approx(0.25)


def test_invalid_weights_and_batches_refused():
    with pytest.raises(ValueError, match="not both 0"):
        InstanceAwareLoss(w_st=0.0, w_cr=0.0)
    with pytest.raises(ValueError, match="3B rows"):
        InstanceAwareLoss()((torch.zeros(4, 2), torch.zeros(4)))


def test_statistics_and_log_values():
    assert triplet_statistics(_pred()) == {"triplet_acc": 0.0, "rank_acc": 0.5}
    values = InstanceAwareLoss().log_values({"pred": _pred()})
    assert values["l_st"] == pytest.approx(3.875) and values["rank_acc"] == 0.5


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0)])
def test_each_term_alone_reaches_the_embeddings(weights):
    z, count = _pred()
    z.requires_grad_(True)
    projection = torch.nn.Linear(2, 1)
    # the count head depends on z, as in the network
    count = projection(z).squeeze(1) + count
    InstanceAwareLoss(w_st=weights[0], w_cr=weights[1])((z, count)).backward()
    assert z.grad.abs().sum() > 0

import torch

from cmgan.train.image_pool import ImagePool


def images(n: int, start: float) -> torch.Tensor:
    """n distinguishable 1x2x2 images whose every pixel equals their id."""
    return (torch.arange(n, dtype=torch.float32) + start).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()


def test_pool_returns_the_new_fakes_until_it_is_full():
    pool = ImagePool(4, seed=0)
    out = pool.query(images(3, 0))
    assert torch.equal(out, images(3, 0))
    assert len(pool) == 3


def test_full_pool_mixes_stored_and_new_fakes_and_keeps_its_size():
    pool = ImagePool(4, seed=0)
    pool.query(images(4, 0))
    from_history = 0
    for i in range(20):
        batch = images(4, 100 + 4 * i)
        served = pool.query(batch)[:, 0, 0, 0]
        from_history += sum(v not in batch[:, 0, 0, 0] for v in served)
    assert len(pool) == 4
    assert 20 < from_history < 60  # about half of the 80 served images come from the history


def test_size_zero_disables_the_pool():
    pool = ImagePool(0, seed=0)
    x = images(3, 0)
    assert pool.query(x) is x and len(pool) == 0


def test_resume_restores_image_pool_and_its_random_stream(tmp_path):
    a = ImagePool(3, seed=7)
    for i in range(4):
        a.query(images(2, 10 * i))
    torch.save(a.state_dict(), tmp_path / "pool.pt")
    b = ImagePool(3, seed=123)
    b.load_state_dict(torch.load(tmp_path / "pool.pt", weights_only=True))
    for i in range(5):
        batch = images(2, 100 + 10 * i)
        assert torch.equal(a.query(batch), b.query(batch))


def test_loading_a_pool_of_another_size_names_the_setting():
    a = ImagePool(3, seed=0)
    b = ImagePool(5, seed=0)
    try:
        b.load_state_dict(a.state_dict())
    except ValueError as e:
        assert "loss.pool_size" in str(e)
    else:
        raise AssertionError("expected a ValueError")

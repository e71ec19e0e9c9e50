from memwise import WorkerPool


def square(x):
    return x * x


def test_submit_and_map():
    with WorkerPool(2) as pool:
        assert pool.submit(square, 7).result() == 49
        assert list(pool.map(square, range(100))) == [x * x for x in range(100)]

import os
import signal

from cmgan.train.stop import StopFlag


def test_a_stop_signal_only_sets_the_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGUSR1)
    with StopFlag() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.signal_name == "SIGUSR1"
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal does not overwrite the first
        assert stop.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) == before


def test_chain_previous_hands_the_signal_to_the_handler_installed_before():
    seen = []
    old = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with StopFlag() as stop:
            os.kill(os.getpid(), signal.SIGUSR2)
            assert seen == []  # our handler ran, not the previous one
        stop.chain_previous()  # after the collective save: e.g. submitit's requeue handler
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, old)

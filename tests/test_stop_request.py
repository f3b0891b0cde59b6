"""gaheads.train.faults.StopRequest: the first SIGTERM/SIGINT asks for a clean stop, a second one aborts at once."""

import os
import signal

import pytest

from gaheads.train.faults import StopRequest


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM)])
def test_second_signal_stops_at_once_without_saving(first, second, capsys):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stop = StopRequest().install()
    try:
        os.kill(os.getpid(), first)  # the handler runs before os.kill returns to the next bytecode
        assert stop.signum == first  # remembered: the loop saves at the next step boundary
        assert "writing a resumable checkpoint at the next step (send it again to stop at once)" in \
            capsys.readouterr().err
        with pytest.raises(KeyboardInterrupt, match=f"second {signal.Signals(second).name}: stopped without saving"):
            os.kill(os.getpid(), second)
        # the second signal put the previous handlers back, so a third one acts as it did before training
        assert {s: signal.getsignal(s) for s in before} == before
    finally:
        stop.restore()
        for s, h in before.items():
            signal.signal(s, h)

"""The console filter: known third-party noise stays off every console handler, the rest passes."""
import io
import logging

from clicks2pref.console import quiet_third_party


def test_noise_is_filtered_on_a_librarys_own_non_propagating_handler():
    """Lightning, imported before logging is configured, gives its logger a handler of its own and stops
    propagation: the filter has to reach that handler too."""
    stream = io.StringIO()
    lightning = logging.getLogger("pytorch_lightning")
    handler = logging.StreamHandler(stream)
    lightning.addHandler(handler)
    old_propagate, lightning.propagate = lightning.propagate, False
    try:
        quiet_third_party()
        rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
        rank_zero.setLevel(logging.INFO)
        rank_zero.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero.info("GPU available: False, used: False")
        rank_zero.info("`Trainer.fit` stopped: `max_steps=3` reached.")
    finally:
        lightning.removeHandler(handler)
        lightning.propagate = old_propagate
    printed = stream.getvalue()
    assert "Tip" not in printed and "GPU available" not in printed
    assert "max_steps=3" in printed

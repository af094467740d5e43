"""Stopping a helper process the tests started (dnsmasq, HAProxy): a polite
SIGTERM, then SIGKILL if it has not gone within the bound."""
import subprocess


def stop(proc, timeout=5):
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)

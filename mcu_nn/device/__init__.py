"""Talking to a board: the serial protocol, a client, the emulator launcher and serial-test."""
from .client import DeviceClient
from .emulator import Emulator
from .protocol import DeviceInfo
from .serial_test import SerialTestResult, serial_test

__all__ = ["DeviceClient", "DeviceInfo", "Emulator", "SerialTestResult", "serial_test"]

"""Python mirror of bpf/lib/drop_reasons.h (checked against the header by a test)."""

from enum import IntEnum


class DropReason(IntEnum):
    TRUNCATED_ETH = -1
    TRUNCATED_IP = -2
    BAD_IHL = -3
    BAD_IP_LEN = -4
    FRAGMENT = -5
    TRUNCATED_TCP = -6
    BAD_DOFF = -7
    BAD_TCP_OPTIONS = -8
    NOT_TCP_TO_VIP = -9
    NO_ROUTE = -10
    NO_FRONTEND = -11
    NO_BACKEND = -12
    REWRITE_FAILED = -13
    TABLE_FULL = -14
    AGENT_TABLE_FULL = -15
    AGENT_NOT_SPLICED = -16
    SPOOFED_BACKEND = -17
    SPOOFED_CLIENT = -18
    GUARDED_PORT = -19

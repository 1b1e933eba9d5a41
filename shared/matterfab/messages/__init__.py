"""Every wire message of matterfab, one module per topic family, and the topic names."""

from matterfab.messages.base import ObjectRef, device_id, index_str
from matterfab.messages.codec import decode, encode
from matterfab.messages.dac_requests import DacReply, DacRequest
from matterfab.messages.dead_letter import DeadLetter
from matterfab.messages.devices import DeviceAllocated, DeviceAttested, DeviceObjects, ImageReady
from matterfab.messages.events import ErrorItem, ManifestRef, OrderEvent
from matterfab.messages.ledger import LedgerDac, LedgerLot
from matterfab.messages.lots import LotAllocated, LotAttested
from matterfab.messages.station import StationResult
from matterfab.messages.work_order import WorkOrder

# Topic names (DESIGN §3) live with the topic specs; re-exported here beside their messages.
from matterfab.topics import (
    DAC_LEDGER,
    DAC_REPLIES,
    DAC_REQUESTS,
    DEAD_LETTER,
    DEVICES_ALLOCATED,
    DEVICES_ATTESTED,
    IMAGES_READY,
    ORDER_EVENTS,
    STATION_RESULTS,
    WORK_ORDERS,
)

# What travels on each topic: the schema export and the AsyncAPI document are made from this.
TOPIC_MESSAGES: dict[str, type] = {
    WORK_ORDERS: WorkOrder,
    DEVICES_ALLOCATED: LotAllocated,
    DEVICES_ATTESTED: LotAttested,
    IMAGES_READY: ImageReady,
    ORDER_EVENTS: OrderEvent,
    STATION_RESULTS: StationResult,
    DAC_LEDGER: LedgerLot,
    DEAD_LETTER: DeadLetter,
    DAC_REQUESTS: DacRequest,
    DAC_REPLIES: DacReply,
}

__all__ = [
    "DAC_LEDGER",
    "DAC_REPLIES",
    "DAC_REQUESTS",
    "DEAD_LETTER",
    "DEVICES_ALLOCATED",
    "DEVICES_ATTESTED",
    "IMAGES_READY",
    "ORDER_EVENTS",
    "STATION_RESULTS",
    "TOPIC_MESSAGES",
    "WORK_ORDERS",
    "DacReply",
    "DacRequest",
    "DeadLetter",
    "DeviceAllocated",
    "DeviceAttested",
    "DeviceObjects",
    "ErrorItem",
    "ImageReady",
    "LedgerDac",
    "LedgerLot",
    "LotAllocated",
    "LotAttested",
    "ManifestRef",
    "ObjectRef",
    "OrderEvent",
    "StationResult",
    "WorkOrder",
    "decode",
    "device_id",
    "encode",
    "index_str",
]

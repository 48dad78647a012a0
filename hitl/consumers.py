"""The reviewer queue's websocket: staff browsers hear that a request was created or changed.

Each change of a human request (after its commit) is sent to the group ``hitl.queue`` by
``hitl.receivers.push_queue_changed``; this consumer forwards it, and the page then fetches
its rows again. Messages carry ids and events only, never a request's content.
"""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from hitl.services import human_request_reads_all

QUEUE_GROUP = "hitl.queue"


@database_sync_to_async
def _reads_all(user) -> bool:
    # The permission check reads the database (the user's groups and permissions).
    return human_request_reads_all(user=user)


class QueueConsumer(AsyncJsonWebsocketConsumer):
    """Accepts whoever may read the queue (``scope["user"]``, from AuthMiddlewareStack, as
    ``human_request_reads_all`` decides); closes on others."""

    async def connect(self):
        user = self.scope.get("user")
        if user is None or not await _reads_all(user):
            # Closing before accepting rejects the handshake (HTTP 403).
            await self.close()
            return
        await self.channel_layer.group_add(QUEUE_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(QUEUE_GROUP, self.channel_name)

    async def receive_json(self, content, **kwargs):
        """The browser has nothing to say; anything it sends is ignored."""

    async def queue_changed(self, message):
        await self.send_json(
            {
                "type": "queue.changed",
                "request_id": message["request_id"],
                "event": message["event"],
            }
        )

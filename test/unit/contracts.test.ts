/**
 * lib/contracts.ts: calls and broadcasts go through with their declared names, params and
 * payloads. The `@ts-expect-error` lines are checked by `npm run typecheck`: if a contract stopped
 * refusing a wrong call, the directive itself would fail the typecheck.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { broadcastEvent, callAction } from "../../lib/contracts";
import { EVENTS } from "../../lib/constants";
import { CHANNELS } from "../../lib/durable-events";
import type { PublisherThis } from "../../mixins/publisher.mixin";

function recorder(answer: unknown) {
	const calls: unknown[][] = [];
	return {
		calls,
		call: async (...args: unknown[]) => {
			calls.push(args);
			return answer;
		},
		broadcast: async (...args: unknown[]) => {
			calls.push(args);
		},
	};
}

describe("contracts between services", () => {
	it("callAction passes the action, its params and the options through, and answers the result", async () => {
		const broker = recorder([{ id: 1, username: "a", avatar_url: null }]);
		const users = await callAction(broker, "users.resolve", { ids: [1] }, { timeout: 5 });
		assert.equal(users[0].username, "a");
		assert.deepEqual(broker.calls, [["users.resolve", { ids: [1] }, { timeout: 5 }]]);
	});

	it("broadcastEvent passes the event, its payload and the groups through", async () => {
		const broker = recorder(undefined);
		await broadcastEvent(broker, EVENTS.userDeleted, { userId: 3 }, ["notifications"]);
		assert.deepEqual(broker.calls, [[EVENTS.userDeleted, { userId: 3 }, ["notifications"]]]);
	});

	it("refuses, at typecheck, an unknown action, wrong params and a wrong payload", () => {
		const broker = recorder(null);
		// Never run: the point is what the compiler says of each line.
		const typeChecks = () => {
			// @ts-expect-error: no such internal action
			void callAction(broker, "users.nope", {});
			// @ts-expect-error: ids are numbers
			void callAction(broker, "users.resolve", { ids: ["1"] });
			// @ts-expect-error: authorizeSend needs the sender
			void callAction(broker, "conversations.authorizeSend", { conversationId: "c" });
			// @ts-expect-error: a user event carries the user id
			void broadcastEvent(broker, EVENTS.userUpdated, { id: 1 });
			const svc = null as unknown as PublisherThis;
			// @ts-expect-error: message.deleted names the message
			void svc.publishEvent(CHANNELS.messageDeleted, { eventId: "e" });
			// @ts-expect-error: a recipient is notified of a message, a message request or a mention, nothing else
			void svc.publishEvent(CHANNELS.messageCreated, { eventId: "e", conversationId: "c", conversationType: "group", conversationName: null, senderId: 1, senderName: "a", senderAvatar: null, content: "", messageType: "text", recipients: [{ userId: 2, type: "reaction" }] });
		};
		assert.equal(typeof typeChecks, "function");
	});
});

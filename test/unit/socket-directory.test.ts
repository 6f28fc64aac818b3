/**
 * The pushing side of the socket directory (lib/socket-directory.ts) with a stand-in broker: where
 * pushes go, and a user who connects while a gateway's full list is on its way is not lost.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { ServiceBroker } from "moleculer";
import { SocketDirectory } from "../../lib/socket-directory";

function fakeBroker(gateways: string[]) {
	const pending = new Map<string, (ids: number[]) => void>();
	const broker = {
		nodeID: "chat",
		logger: { warn: () => undefined },
		registry: { getServiceList: () => gateways.map(nodeID => ({ name: "api", nodeID })) },
		call: (_action: string, _params: unknown, opts: { nodeID: string }) => new Promise<number[]>(resolve => pending.set(opts.nodeID, resolve)),
	};
	return { broker: broker as unknown as ServiceBroker, answer: (nodeID: string, ids: number[]) => pending.get(nodeID)?.(ids) };
}

const tick = () => new Promise(r => setImmediate(r));
const room = (id: number) => ({ rooms: [`user:${id}`] });

describe("socket directory", () => {
	it("sends to every gateway until synced, then only where the users are; a change made during the sync is kept", async () => {
		const { broker, answer } = fakeBroker(["g1", "g2"]);
		const dir = new SocketDirectory(broker);
		// Not synced: everything everywhere, and the lists are asked for.
		assert.deepEqual([...(dir.plan([room(1)]) ?? new Map()).keys()].sort(), ["g1", "g2"]);
		// User 3 connects to g2 after g2 read its list (which did not have it), before the list arrives.
		dir.apply({ gateway: "g2", joined: [3] });
		answer("g1", [1]);
		answer("g2", [2]);
		await tick();
		assert.deepEqual([...(dir.plan([room(1)]) ?? new Map()).keys()], ["g1"]);
		assert.deepEqual([...(dir.plan([room(3)]) ?? new Map()).keys()], ["g2"], "the join told during the sync is not lost");
		assert.equal(dir.plan([room(9)])?.size, 0, "a user with no socket anywhere: nowhere");
		// Any room that is not a user room: every gateway.
		assert.deepEqual([...(dir.plan([{ rooms: ["conversation:x"] }]) ?? new Map()).keys()].sort(), ["g1", "g2"]);
		dir.apply({ gateway: "g1", left: [1] });
		assert.equal(dir.plan([room(1)])?.size, 0);
	});

	it("plans nothing for a single node that is its own gateway", () => {
		const { broker } = fakeBroker(["chat"]);
		assert.equal(new SocketDirectory(broker).plan([room(1)]), null);
	});
});

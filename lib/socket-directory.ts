/**
 * Which gateway nodes hold sockets of which users, so that a push goes only to the gateways
 * that can deliver it, not to every gateway of the cluster (an idle gateway spent ~0.35 ms of
 * CPU on every message it only had to drop: 4 gateways over RabbitMQ, 200 msg/s).
 *
 * Pusher side (every node with a service using the push mixin): one SocketDirectory per broker.
 * - A gateway tells it of users that gained their first or lost their last socket there
 *   (`<service>.socketDirectory`, acknowledged calls, in order). A socket's connection waits for
 *   every pusher node to acknowledge its user, so no push can miss a socket that is connected.
 * - A gateway it has not synced yet (just started, reconnected, or a call to it failed) gets
 *   every push, while the directory pulls its full list (`api.socketUsers`); every 5 minutes the
 *   list is pulled again anyway. A gateway that leaves
 *   the cluster is forgotten: the map holds only live gateways, so it survives their restarts.
 * - Pushes for rooms other than user rooms (conversation rooms for typing, socket ids) go to
 *   every gateway.
 *
 * Gateway side: DirectoryAnnouncer batches the changes and sends each batch to every pusher node.
 */
import type { Context, ServiceBroker } from "moleculer";
import { Batcher } from "./batcher";
import { type ActionName, callAction } from "./contracts";

/** The action every push-mixin service has, that gateways call. */
export const DIRECTORY_ACTION = "socketDirectory";
/** On the gateway: the users with at least one socket on this node. */
export const SOCKET_USERS_ACTION = "api.socketUsers" satisfies ActionName;
const CALL_TIMEOUT_MS = 5_000;
/** A safety net: a gateway's full list is pulled again this often, whatever deltas said. */
const RESYNC_MS = 5 * 60_000;

export interface DirectoryChange {
	gateway: string;
	joined?: number[];
	left?: number[];
	/** The gateway could not tell this node some changes: pull its full list again. */
	resync?: boolean;
}

const USER_ROOM = /^user:(\d+)$/;

/** The nodes that run the gateway (`api`) and are available now. */
export function gatewayNodes(broker: ServiceBroker): string[] {
	const services = broker.registry.getServiceList({ onlyAvailable: true }) as { name: string; nodeID: string }[];
	return [...new Set(services.filter(s => s.name === "api").map(s => s.nodeID))];
}

export class SocketDirectory {
	private readonly usersOf = new Map<string, Set<number>>();
	/** Gateways whose full list we have, and when it came. */
	private readonly synced = new Map<string, number>();
	/** Gateways whose full list is on its way, with the changes they told us meanwhile (replayed on it). */
	private readonly syncing = new Map<string, DirectoryChange[]>();
	/** Gateways (nodes running `api`) of the cluster, from the registry; null: look again. */
	private gatewayList: string[] | null = null;

	constructor(private readonly broker: ServiceBroker) {}

	/** The registry changed (a node came, went, or changed its services). */
	nodesChanged(): void {
		this.gatewayList = null;
	}

	/** A node joined (or came back with a new instance): whatever we knew of it is stale. */
	forgetNode(nodeID: string): void {
		this.usersOf.delete(nodeID);
		this.synced.delete(nodeID);
		this.gatewayList = null;
	}

	gateways(): string[] {
		if (!this.gatewayList) this.gatewayList = gatewayNodes(this.broker);
		return this.gatewayList;
	}

	apply(change: DirectoryChange): void {
		const { gateway } = change;
		if (change.resync) {
			this.synced.delete(gateway);
			return;
		}
		this.syncing.get(gateway)?.push(change);
		let users = this.usersOf.get(gateway);
		if (!users) this.usersOf.set(gateway, (users = new Set()));
		for (const id of change.joined ?? []) users.add(id);
		for (const id of change.left ?? []) users.delete(id);
	}

	/**
	 * Where each item goes: gateway → its items. Every gateway for an item with a room that is
	 * not a user room; for user rooms, the gateways holding those users, and every gateway not
	 * synced yet. A single-node system (the gateway is here) is not planned at all: null.
	 */
	plan<T extends { rooms: string[] }>(items: T[]): Map<string, T[]> | null {
		const gateways = this.gateways();
		if (gateways.length === 1 && gateways[0] === this.broker.nodeID) return null;
		const stale = Date.now() - RESYNC_MS;
		for (const g of gateways) if ((this.synced.get(g) ?? 0) < stale) this.sync(g);
		const out = new Map<string, T[]>();
		const add = (g: string, item: T) => {
			const list = out.get(g);
			if (list) list.push(item);
			else out.set(g, [item]);
		};
		for (const item of items) {
			const userIds: number[] = [];
			let everywhere = false;
			for (const room of item.rooms) {
				const m = USER_ROOM.exec(room);
				if (!m) {
					everywhere = true;
					break;
				}
				userIds.push(Number(m[1]));
			}
			if (everywhere) {
				for (const g of gateways) add(g, item);
				continue;
			}
			for (const g of gateways) {
				if (!this.synced.has(g)) add(g, item);
				else {
					const users = this.usersOf.get(g);
					if (users && userIds.some(id => users.has(id))) add(g, item);
				}
			}
		}
		return out;
	}

	/**
	 * Pull a gateway's full list; until it arrives the gateway gets every push. The changes it sent
	 * while the list was on its way are replayed on the list, in order: one made after the list was
	 * read (a user's first socket) is not lost, one made before it agrees with it.
	 */
	private sync(gateway: string): void {
		if (this.syncing.has(gateway)) return;
		const meanwhile: DirectoryChange[] = [];
		this.syncing.set(gateway, meanwhile);
		void (async () => {
			try {
				const userIds = await callAction(this.broker, SOCKET_USERS_ACTION, {}, { nodeID: gateway, timeout: CALL_TIMEOUT_MS, retries: 0 });
				const users = new Set(userIds);
				for (const change of meanwhile) {
					for (const id of change.joined ?? []) users.add(id);
					for (const id of change.left ?? []) users.delete(id);
				}
				this.usersOf.set(gateway, users);
				this.synced.set(gateway, Date.now());
			} catch (err) {
				this.broker.logger.warn(`Socket directory: no user list from gateway ${gateway} yet (${(err as Error).message}); it gets every push meanwhile`);
			} finally {
				this.syncing.delete(gateway);
			}
		})();
	}
}

const directories = new WeakMap<ServiceBroker, SocketDirectory>();

/** The one directory of this broker (several services of a node share it). */
export function directoryOf(broker: ServiceBroker): SocketDirectory {
	let dir = directories.get(broker);
	if (!dir) directories.set(broker, (dir = new SocketDirectory(broker)));
	return dir;
}

/**
 * Gateway side: tells every pusher node which users gained or lost their sockets here. A batch
 * at a time, in order; join() settles once every pusher node acknowledged it (or failed: that
 * node is told to pull the full list, and sends everything here meanwhile).
 */
export class DirectoryAnnouncer {
	private readonly state = new Map<number, boolean>();
	private readonly batcher: Batcher<number, void>;

	constructor(
		private readonly broker: ServiceBroker,
		private readonly present: (userId: number) => boolean,
	) {
		this.batcher = new Batcher<number, void>(async userIds => {
			await this.send([...new Set(userIds)]);
			return userIds.map(() => undefined);
		});
	}

	/** Settles when every pusher node knows userId has sockets here. */
	join(userId: number): Promise<void> {
		return this.batcher.add(userId);
	}

	/** userId has no socket here any more (told in the background). */
	leave(userId: number): void {
		void this.batcher.add(userId).catch(() => undefined);
	}

	private async send(userIds: number[]): Promise<void> {
		// The state at send time: a join and a leave in one batch end as whichever is true now.
		const joined: number[] = [];
		const left: number[] = [];
		for (const id of userIds) {
			const now = this.present(id);
			if (this.state.get(id) === now) continue;
			if (now) {
				this.state.set(id, true);
				joined.push(id);
			} else {
				this.state.delete(id);
				left.push(id);
			}
		}
		if (joined.length === 0 && left.length === 0) return;
		const change: DirectoryChange = { gateway: this.broker.nodeID, joined, left };
		await Promise.all(
			[...pusherNodes(this.broker)].map(([nodeID, action]) =>
				this.broker.call(action, change, { nodeID, timeout: CALL_TIMEOUT_MS, retries: 0 }).catch((err: Error) => {
					this.broker.logger.warn(`Socket directory: ${nodeID} missed a change (${err.message}); it is asked to pull the full list`);
					return this.broker.call(action, { gateway: this.broker.nodeID, resync: true }, { nodeID, timeout: CALL_TIMEOUT_MS, retries: 0 }).catch(() => undefined);
				}),
			),
		);
	}
}

/** Each node with a push-mixin service, and one of its directory actions (the directory is per node). */
function pusherNodes(broker: ServiceBroker): Map<string, string> {
	const services = broker.registry.getServiceList({ onlyAvailable: true, withActions: true }) as { name: string; nodeID: string; actions?: Record<string, unknown> }[];
	const out = new Map<string, string>();
	for (const s of services) {
		const action = `${s.name}.${DIRECTORY_ACTION}`;
		if (!out.has(s.nodeID) && s.actions?.[action]) out.set(s.nodeID, action);
	}
	return out;
}

/**
 * A broadcast event sent to some nodes only: what `broker.broadcast` does (Moleculer 0.14:
 * one event packet per remote endpoint, local handlers through broadcastLocal), restricted to
 * `nodeIDs`. Moleculer has no public "emit to this node"; an action call per gateway would cost a
 * response as well.
 */
export function broadcastToNodes(broker: ServiceBroker, nodeIDs: ReadonlySet<string>, eventName: string, payload: unknown, groups: string[], parentCtx?: Context | null): Promise<unknown> {
	const opts: Record<string, unknown> = { groups };
	if (parentCtx) opts.parentCtx = parentCtx;
	const internal = broker as unknown as {
		transit?: { sendEvent(ctx: unknown): Promise<unknown> };
		ContextFactory: { create(broker: ServiceBroker, endpoint: null, params: unknown, opts: unknown): { eventName: string; eventType: string; eventGroups: string[]; copy(ep: unknown): unknown } };
		registry: { events: { getAllEndpoints(event: string, groups: string[]): { id: string }[] } };
	};
	const promises: Promise<unknown>[] = [];
	let local = false;
	if (internal.transit) {
		const ctx = internal.ContextFactory.create(broker, null, payload, opts);
		ctx.eventName = eventName;
		ctx.eventType = "broadcast";
		ctx.eventGroups = groups;
		for (const ep of internal.registry.events.getAllEndpoints(eventName, groups)) {
			if (!nodeIDs.has(ep.id)) continue;
			if (ep.id === broker.nodeID) local = true;
			else promises.push(internal.transit.sendEvent(ctx.copy(ep)));
		}
	} else {
		local = nodeIDs.has(broker.nodeID);
	}
	if (local) promises.push(broker.broadcastLocal(eventName, payload, opts));
	return Promise.all(promises);
}

/**
 * A read-through cache on the broker's cacher (moleculer.config.ts: MemoryLRU inside a node,
 * Redis shared by all nodes with REDIS_URL), for data read on every message and changed rarely.
 *
 * Invalidation holds across nodes: the writer forgets its entries, then has every other node of
 * the service forget them too (forgetOnOtherNodes: acknowledged calls, so once the change is
 * answered no node serves the old value). A read that was in flight while anything was forgotten
 * on a node is returned but not cached there, so an old value read before a change cannot be
 * stored after it. With no cacher (a broker without one) every get reads.
 */
import type { ServiceBroker } from "moleculer";

/**
 * Calls `action` (a service's own "forget" action) with `params` on every other node running it,
 * and waits for all, each bounded by `timeoutMs`. A node that cannot be reached is logged and
 * skipped: it keeps its entries until their TTL.
 */
export async function forgetOnOtherNodes(broker: ServiceBroker, action: string, params: unknown, timeoutMs: number, requestID?: string | null): Promise<void> {
	// The action's endpoints, not getServiceList({ withActions }): that copies every service and
	// action of the registry (lodash), 7 % of the node's CPU when called per notification batch.
	const registry = broker.registry as unknown as { getActionEndpoints(name: string): { endpoints: { id: string; local: boolean; isAvailable: boolean }[] } | undefined };
	const endpoints = registry.getActionEndpoints(action)?.endpoints ?? [];
	const nodes = new Set(endpoints.filter(ep => ep.isAvailable && !ep.local).map(ep => ep.id));
	if (nodes.size === 0) return;
	await Promise.all(
		[...nodes].map(nodeID =>
			broker.call(action, params, { nodeID, timeout: timeoutMs, retries: 0, requestID: requestID ?? undefined }).catch((err: Error) => {
				broker.logger.warn(`${action} on node ${nodeID} failed (${err.message}): it keeps its cached entries until they expire`);
			}),
		),
	);
}

export class ReadCache<T> {
	/** Bumped by every forget: a load that saw it change while in flight is not cached. */
	private epoch = 0;

	constructor(
		private readonly broker: ServiceBroker,
		private readonly prefix: string,
		private readonly ttlSeconds: number,
	) {}

	private key(id: string): string {
		return `${this.prefix}:${id}`;
	}

	async get(id: string, load: () => Promise<T | null>): Promise<T | null> {
		const cacher = this.broker.cacher;
		if (!cacher) return load();
		const key = this.key(id);
		try {
			const hit = (await cacher.get(key)) as T | null | undefined;
			if (hit !== null && hit !== undefined) return hit;
		} catch (err) {
			// The shared cache being away slows reads down; it does not fail them.
			this.broker.logger.warn(`Cache read of ${key} failed`, (err as Error).message);
		}
		const epoch = this.epoch;
		const value = await load();
		if (value !== null && epoch === this.epoch) {
			await Promise.resolve(cacher.set(key, value, this.ttlSeconds)).catch(() => undefined);
		}
		return value;
	}

	/** Forget these entries here (and in the shared cache): ids, or "all". */
	async forget(ids: string[] | "all"): Promise<void> {
		this.epoch++;
		const cacher = this.broker.cacher;
		if (!cacher) return;
		try {
			if (ids === "all") await cacher.clean(`${this.prefix}:**`);
			else if (ids.length > 0) await cacher.del(ids.map(id => this.key(id)));
		} catch (err) {
			this.broker.logger.warn(`Cache invalidation of ${this.prefix} failed`, (err as Error).message);
		}
	}
}

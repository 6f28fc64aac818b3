/**
 * Durable events out of a service (lib/durable-events.ts), and the background work that
 * publishes them: tracked, so a stopping node finishes what it accepted before it leaves.
 */
import type { Service, ServiceSchema, ServiceSettingSchema } from "moleculer";
import type { ChannelPayloads } from "../lib/contracts";
import { type ChannelName, DurablePublisher } from "../lib/durable-events";

export interface PublisherThis extends Service {
	publisher: DurablePublisher;
	backgroundWork: Set<Promise<unknown>>;
	/** The payload is the channel's (lib/contracts.ts): a consumer reads exactly what is sent. */
	publishEvent<C extends ChannelName>(channel: C, payload: ChannelPayloads[C]): Promise<void>;
	publishPatiently<C extends ChannelName>(channel: C, payload: ChannelPayloads[C]): Promise<void>;
	inBackground(label: string, work: () => Promise<unknown>): void;
}

export const PublisherMixin: Partial<ServiceSchema> = {
	methods: {
		publishEvent<C extends ChannelName>(this: PublisherThis, channel: C, payload: ChannelPayloads[C]) {
			return this.publisher.publish(channel, payload);
		},
		/** A few tries over ~10 s: the bus may be restarting. For events with no outbox behind them. */
		async publishPatiently<C extends ChannelName>(this: PublisherThis, channel: C, payload: ChannelPayloads[C]) {
			for (let attempt = 0; ; attempt++) {
				try {
					return await this.publisher.publish(channel, payload);
				} catch (err) {
					if (attempt >= 4) throw err;
					await new Promise(r => setTimeout(r, 500 * 2 ** attempt));
				}
			}
		},
		inBackground(this: PublisherThis, label: string, work: () => Promise<unknown>) {
			const run = work().catch(err => this.logger.warn(`${label} failed; it will be retried`, (err as Error).message));
			this.backgroundWork.add(run);
			void run.finally(() => this.backgroundWork.delete(run));
		},
	},
	created(this: PublisherThis) {
		this.publisher = new DurablePublisher(this.broker);
		this.backgroundWork = new Set();
	},
	async stopped(this: PublisherThis) {
		// Finish the publishing already started (bounded), then let go of RabbitMQ.
		await Promise.race([Promise.allSettled([...this.backgroundWork]), new Promise(r => setTimeout(r, 10_000).unref())]);
		await this.publisher.close();
	},
} as Partial<ServiceSchema<ServiceSettingSchema, PublisherThis>> as Partial<ServiceSchema>;

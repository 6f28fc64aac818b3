/**
 * Durable work between services: @moleculer/channels consumes, in consumer groups,
 * from durable RabbitMQ queues (in-process "Fake" adapter in the embedded mode).
 *
 * Publishing does not go through the channels adapter in AMQP mode: it publishes without
 * publisher confirms, so a message it "sent" may never have reached RabbitMQ. DurablePublisher
 * uses a confirm channel and declares the consumer groups' durable queues itself, so an event is
 * kept even when its consumer has never run yet, and a publish only counts once RabbitMQ has it.
 */
import amqplib from "amqplib";
import type { ServiceBroker } from "moleculer";
import { config } from "./config";

interface ConsumerAdapter {
	logger: { warn(...args: unknown[]): void };
	createConsumerHandler(chan: { name: string }): (msg: unknown) => Promise<void>;
}
const Channels = require("@moleculer/channels") as {
	Middleware: (opts: unknown) => unknown;
	Adapters: { AMQP: new (opts: unknown) => ConsumerAdapter };
};
const ChannelsMiddleware = Channels.Middleware;

/**
 * @moleculer/channels 0.1.8 acknowledges (or republishes for a retry) on the channel it received
 * a message on; when RabbitMQ goes away mid-message that channel is closed, the call throws inside
 * the handler amqplib does not await, and the unhandled rejection ends the process. Here such a
 * failure is logged instead: the message was not acknowledged, so RabbitMQ delivers it again once
 * the adapter has reconnected (by itself, every 2 s), and the consumers keep one notification per
 * (event, user), so nothing is made twice.
 */
class ReconnectSafeAmqpAdapter extends Channels.Adapters.AMQP {
	override createConsumerHandler(chan: { name: string }) {
		const handle = super.createConsumerHandler(chan);
		return async (msg: unknown) => {
			try {
				await handle(msg);
			} catch (err) {
				this.logger.warn(`A message of '${chan.name}' was not acknowledged (${(err as Error).message}); RabbitMQ delivers it again after the reconnect.`);
			}
		};
	}
}

export const CHANNELS = {
	messageCreated: "message.created",
	groupInviteCreated: "group_invite.created",
	systemBroadcast: "system.broadcast",
	/** A message was deleted: its notifications go too (their text is the message's). */
	messageDeleted: "message.deleted",
} as const;
export type ChannelName = (typeof CHANNELS)[keyof typeof CHANNELS];

/** The consumer groups of each channel: their queues are declared by the publisher too. */
export const CONSUMER_GROUPS: Record<ChannelName, string[]> = {
	[CHANNELS.messageCreated]: ["notifications"],
	[CHANNELS.groupInviteCreated]: ["notifications"],
	[CHANNELS.systemBroadcast]: ["notifications"],
	[CHANNELS.messageDeleted]: ["notifications"],
};

export const DEAD_LETTER_QUEUE = "DEAD_LETTER";

/** RabbitMQ for the channels: CHANNELS_URL, else TRANSPORTER when it is AMQP; null = in-process. */
export function channelsUrl(): string | null {
	const explicit = process.env.CHANNELS_URL;
	if (explicit) return explicit;
	const transporter = config.transporter;
	return transporter && /^amqps?:\/\//i.test(transporter) ? transporter : null;
}

export function createChannelsMiddleware() {
	const url = channelsUrl();
	// In one process the consumers batch their writes (lib/batcher.ts): many events in flight fill a batch.
	if (!url) return ChannelsMiddleware({ adapter: { type: "Fake", options: { maxInFlight: 200 } } });
	return ChannelsMiddleware({
		adapter: new ReconnectSafeAmqpAdapter({
			amqp: {
				url,
				socketOptions: { noDelay: true },
				queueOptions: { durable: true },
				exchangeOptions: { durable: true },
				messageOptions: { persistent: true },
			},
			maxInFlight: 50,
			maxRetries: 8,
			deadLettering: { enabled: true, queueName: DEAD_LETTER_QUEUE },
		}),
	});
}

/** The name the channels adapter gives a channel: prefixed with the Moleculer namespace. */
export function prefixed(name: string, namespace: string): string {
	return namespace ? `${namespace}.${name}` : name;
}

/**
 * Delete the durable queues and exchanges of a namespace (tests and benchmarks that made a
 * throw-away namespace); a real cluster keeps them, that is the point of them.
 */
export async function removeNamespaceTopology(url: string, namespace: string): Promise<void> {
	const connection = await amqplib.connect(url);
	try {
		const ch = await connection.createChannel();
		for (const name of Object.values(CHANNELS)) {
			for (const group of CONSUMER_GROUPS[name]) await ch.deleteQueue(`${group}.${prefixed(name, namespace)}`);
			await ch.deleteExchange(prefixed(name, namespace));
		}
		await ch.deleteQueue(prefixed(DEAD_LETTER_QUEUE, namespace));
		await ch.deleteExchange(prefixed(DEAD_LETTER_QUEUE, namespace));
	} finally {
		await connection.close();
	}
}

export class DurablePublisher {
	private connection: amqplib.ChannelModel | null = null;
	private channel: amqplib.ConfirmChannel | null = null;
	private connecting: Promise<amqplib.ConfirmChannel> | null = null;
	private readonly declared = new Set<string>();
	private closed = false;

	constructor(
		private readonly broker: ServiceBroker,
		private readonly url: string | null = channelsUrl(),
	) {}

	/** Resolves once the event is safely queued (RabbitMQ confirmed it, or handed in-process). */
	async publish(channelName: ChannelName, payload: unknown): Promise<void> {
		if (!this.url) {
			await (this.broker as unknown as { sendToChannel(name: string, payload: unknown): Promise<void> }).sendToChannel(channelName, payload);
			return;
		}
		const ch = await this.confirmChannel();
		const exchange = prefixed(channelName, this.broker.namespace);
		if (!this.declared.has(exchange)) {
			// Same options as the channels adapter uses, or RabbitMQ refuses the second declaration.
			await ch.assertExchange(exchange, "fanout", { durable: true });
			for (const group of CONSUMER_GROUPS[channelName]) {
				const queue = `${group}.${exchange}`;
				await ch.assertQueue(queue, { durable: true });
				await ch.bindQueue(queue, exchange, "");
			}
			this.declared.add(exchange);
		}
		await new Promise<void>((resolve, reject) => {
			// The callback is RabbitMQ's confirm: only then is the event really kept.
			ch.publish(exchange, "", Buffer.from(JSON.stringify(payload)), { persistent: true, contentType: "application/json" }, err => (err ? reject(err) : resolve()));
		}).catch(err => {
			this.reset();
			throw err;
		});
	}

	/**
	 * The durable queues' depth and consumers, and the dead-letter queue's depth (for the metrics).
	 * Each queue is looked at on a channel of its own: a missing one closes only that channel.
	 */
	async queueStats(): Promise<{ queue: string; messages: number; consumers: number }[]> {
		if (!this.url) return [];
		await this.confirmChannel();
		const connection = this.connection;
		if (!connection) return [];
		const namespace = this.broker.namespace;
		const queues = [
			...(Object.entries(CONSUMER_GROUPS) as [ChannelName, string[]][]).flatMap(([name, groups]) => groups.map(group => `${group}.${prefixed(name, namespace)}`)),
			prefixed(DEAD_LETTER_QUEUE, namespace),
		];
		const out: { queue: string; messages: number; consumers: number }[] = [];
		for (const queue of queues) {
			const ch = await connection.createChannel();
			ch.on("error", () => undefined);
			try {
				const q = await ch.checkQueue(queue);
				out.push({ queue, messages: q.messageCount, consumers: q.consumerCount });
			} catch {
				// not declared yet: nothing waits there
			} finally {
				await ch.close().catch(() => undefined);
			}
		}
		return out;
	}

	private confirmChannel(): Promise<amqplib.ConfirmChannel> {
		if (this.closed) return Promise.reject(new Error("Publisher closed"));
		if (this.channel) return Promise.resolve(this.channel);
		if (!this.connecting) {
			this.connecting = (async () => {
				const connection = await amqplib.connect(this.url as string, { noDelay: true });
				connection.on("error", () => this.reset());
				connection.on("close", () => this.reset());
				const channel = await connection.createConfirmChannel();
				channel.on("error", () => this.reset());
				channel.on("close", () => this.reset());
				this.connection = connection;
				this.channel = channel;
				return channel;
			})().finally(() => {
				this.connecting = null;
			});
		}
		return this.connecting;
	}

	private reset() {
		const connection = this.connection;
		this.connection = null;
		this.channel = null;
		this.declared.clear();
		if (connection) connection.close().catch(() => undefined);
	}

	async close(): Promise<void> {
		this.closed = true;
		const connection = this.connection;
		this.connection = null;
		this.channel = null;
		if (connection) await connection.close().catch(() => undefined);
	}
}

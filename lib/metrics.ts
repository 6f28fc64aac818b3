/**
 * What a chat operator watches, as Moleculer metrics (exported by its Prometheus reporter on
 * METRICS_PORT, beside Moleculer's own: requests, latencies, errors, event loop, cache hits).
 * Every name is declared here once; a metric is registered the first time a node uses it, and
 * nothing is counted while metrics are off (the default).
 */
import type { ServiceBroker } from "moleculer";

interface MetricSpec {
	type: "counter" | "gauge" | "histogram";
	description: string;
	labelNames?: string[];
	buckets?: number[];
	quantiles?: number[];
}

export const CHAT_METRICS = {
	parley_messages_sent_total: { type: "counter", description: "Messages stored by messages.send (a retry with a used clientId not counted)." },
	parley_messages_delivered_total: { type: "counter", description: "message:created events emitted to sockets, one per socket reached." },
	parley_message_send_to_deliver_seconds: {
		type: "histogram",
		description: "From a message's creation to its message:created leaving a gateway for the sockets.",
		buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
		// With quantiles the Prometheus reporter also writes _sum and _count.
		quantiles: [0.5, 0.99],
	},
	parley_sockets_open: { type: "gauge", description: "Open sockets on this gateway node.", labelNames: ["namespace"] },
	parley_durable_queue_messages: { type: "gauge", description: "Messages waiting in a durable queue (RabbitMQ).", labelNames: ["queue"] },
	parley_durable_queue_consumers: { type: "gauge", description: "Consumers of a durable queue (0: its events wait).", labelNames: ["queue"] },
	parley_outbox_backlog: { type: "gauge", description: "Stored messages whose message.created is not yet on the durable bus." },
	parley_dead_letter_messages: { type: "gauge", description: "Events in the dead-letter queue (failed every retry)." },
	parley_rate_limit_rejections_total: { type: "counter", description: "Requests and socket events refused by a rate limit.", labelNames: ["limit"] },
} satisfies Record<string, MetricSpec>;

export type ChatMetric = keyof typeof CHAT_METRICS;
type Labels = Record<string, string>;

function ready(broker: ServiceBroker, name: ChatMetric): boolean {
	if (!broker.isMetricsEnabled()) return false;
	if (!broker.metrics.getMetric(name)) broker.metrics.register({ name, ...(CHAT_METRICS[name] as MetricSpec) } as never);
	return true;
}

export function countMetric(broker: ServiceBroker, name: ChatMetric, value = 1, labels?: Labels): void {
	if (ready(broker, name)) broker.metrics.increment(name, labels, value);
}

export function setMetric(broker: ServiceBroker, name: ChatMetric, value: number, labels?: Labels): void {
	if (ready(broker, name)) broker.metrics.set(name, value, labels);
}

export function observeMetric(broker: ServiceBroker, name: ChatMetric, value: number): void {
	if (ready(broker, name)) broker.metrics.observe(name, value);
}

/** Broker options for metrics: Moleculer's Prometheus reporter on METRICS_PORT, off without it. */
export function metricsOptions(port: number | null) {
	if (!port) return { enabled: false };
	return { enabled: true, reporter: [{ type: "Prometheus", options: { port, path: "/metrics" } }] };
}

/**
 * Broker options for tracing: Moleculer's tracer with the exporter TRACING_EXPORTER names
 * ("Console" prints each span; "Event" emits them as Moleculer events; any other exporter of
 * Moleculer's by its name). The request's X-Trace-Id is the trace's id, on every node.
 */
export function tracingOptions(exporter: string | null) {
	if (!exporter) return { enabled: false };
	return { enabled: true, exporter: [{ type: exporter }], sampling: { rate: 1 } };
}

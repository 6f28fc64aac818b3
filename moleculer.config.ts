/**
 * Broker options, all from the environment (CONTRACT.md "Running it").
 * With no TRANSPORTER the node is the whole system in one process.
 */
import os from "node:os";
import type { BrokerOptions, Errors, Middleware } from "moleculer";
import { config, isProduction } from "./lib/config";
import { createChannelsMiddleware } from "./lib/durable-events";
import { TraceLogMiddleware } from "./middlewares/trace-log.middleware";

function transporter(): BrokerOptions["transporter"] {
	const url = config.transporter;
	if (!url) return null;
	if (/^amqps?:\/\//i.test(url)) {
		return {
			type: "AMQP",
			options: {
				url,
				// Transporter defaults stall every call ~44 ms (Nagle on, prefetch 1): DESIGN.md, performance traps.
				socketOptions: { noDelay: true },
				prefetch: 100,
				autoDeleteQueues: 60_000,
			},
		};
	}
	return url;
}

const brokerConfig: BrokerOptions = {
	namespace: config.namespace,
	nodeID: process.env.NODE_ID || `${os.hostname().toLowerCase()}-${process.pid}`,
	transporter: transporter(),
	logger: {
		type: "Console",
		options: {
			level: config.logLevel,
			formatter: isProduction() ? "json" : "short",
			colors: !isProduction(),
			moduleColors: false,
		},
	},
	logLevel: config.logLevel as BrokerOptions["logLevel"],
	requestTimeout: 15_000,
	// A node that died without saying goodbye (SIGKILL, power loss) is dropped after 15 s
	// (the default is 30 s), so fewer calls go to it meanwhile.
	heartbeatInterval: 5,
	heartbeatTimeout: 15,
	// Only a request that a stopping node refused (it never ran) is sent again, to another node:
	// retrying anything else could run a non-idempotent action twice.
	retryPolicy: {
		enabled: true,
		retries: 5,
		delay: 100,
		maxDelay: 2000,
		factor: 2,
		check: (err: Error) => (err as Errors.MoleculerError).type === "SERVICE_NOT_AVAILABLE",
	},
	// Stop waits for calls in flight (SIGTERM: finish what was accepted, then leave).
	tracking: { enabled: true, shutdownTimeout: 15_000 },
	// A stopping node first tells the cluster it has no services, then waits this long for
	// that news to cross RabbitMQ before it refuses requests.
	registry: { strategy: "RoundRobin", preferLocal: true, stopDelay: 1000 } as BrokerOptions["registry"],
	circuitBreaker: { enabled: false },
	validator: true,
	metrics: { enabled: false },
	tracing: { enabled: false },
	middlewares: [TraceLogMiddleware(), createChannelsMiddleware() as Middleware],
};

export default brokerConfig;

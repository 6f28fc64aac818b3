/**
 * Logs each local action call with the request's trace id (ctx.requestID, which the gateway
 * sets from X-Trace-Id and Moleculer carries to every node), so the logs of all nodes can be
 * joined on it: calls at debug level, failures that are not the client's fault at error level.
 */
import type { ActionHandler, ActionSchema, Context, Middleware, ServiceBroker } from "moleculer";

export function TraceLogMiddleware(): Middleware {
	let logger: ReturnType<ServiceBroker["getLogger"]>;
	// Moleculer makes a disabled level a no-op function, so `if (logger.debug)` is always true:
	// whether to build the debug line at all is decided from the configured level, once.
	let debug = false;
	return {
		name: "TraceLog",
		created(broker: ServiceBroker) {
			logger = broker.getLogger("trace");
			const level = broker.options.logLevel;
			debug = typeof level === "string" && ["debug", "trace"].includes(level);
		},
		localAction(next: ActionHandler, action: ActionSchema) {
			return async function traced(ctx: Context) {
				const started = process.hrtime.bigint();
				try {
					const result = await next(ctx);
					if (debug) logger.debug(`[${ctx.requestID}] ${action.name} ok ${Number(process.hrtime.bigint() - started) / 1e6}ms`);
					return result;
				} catch (err) {
					const status = (err as { code?: unknown }).code;
					if (typeof status === "number" && status >= 400 && status < 500) {
						if (debug) logger.debug(`[${ctx.requestID}] ${action.name} refused: ${(err as Error).message}`);
					} else {
						logger.error(`[${ctx.requestID}] ${action.name} failed`, err);
					}
					throw err;
				}
			};
		},
	} as unknown as Middleware;
}

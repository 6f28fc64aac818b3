/**
 * The gateway's HTTP basics, for every answer, routed or not: the trace id (X-Trace-Id, which
 * becomes the context's requestID and follows the call to every node), the page-hardening
 * headers, CORS, JSON body parsing, the client's address behind trusted proxies, and the
 * contract's error envelope.
 */
import crypto from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Context, Service, ServiceSchema } from "moleculer";
import ApiGateway from "moleculer-web";
import { config } from "../lib/config";
import { appError, toEnvelope } from "../lib/errors";
import type { CallMeta } from "../lib/meta";
import type { AccessSession } from "../lib/tokens";
import { ALLOWED_HEADERS } from "./gateway-sockets.mixin";

export const MiB = 1024 * 1024;

export type Next = (err?: unknown) => void;

export interface GatewayRequest extends IncomingMessage {
	$ctx: Context<unknown, CallMeta>;
	$route?: { cors?: unknown; opts: { name?: string } };
	$action?: { name: string };
	$params?: Record<string, unknown>;
	/** The verified access token of an authenticated route, checked before the body is read. */
	$session?: AccessSession;
	traceId?: string;
}

export interface GatewayHttpThis extends Service {
	sendError(req: GatewayRequest, res: ServerResponse, err: unknown): void;
	clientIp(req: IncomingMessage): string;
	isSecureRequest(req: IncomingMessage): boolean;
	setCallMeta(ctx: Context<unknown, CallMeta>, req: GatewayRequest): void;
	writeCorsHeaders(route: unknown, req: IncomingMessage, res: ServerResponse, preflight: boolean): void;
}

/** A route middleware (moleculer-web calls it with the service as `this`). */
export type RouteMiddleware<T = GatewayHttpThis> = (this: T, req: GatewayRequest, res: ServerResponse, next: Next) => void;

/** body-parser, as moleculer-web ships it. */
const jsonBodyParser = (ApiGateway as unknown as {
	bodyParser: { json(opts: { limit: number; strict: boolean; reviver?: (key: string, value: unknown) => unknown }): (req: IncomingMessage, res: ServerResponse, next: Next) => void };
}).bodyParser.json;

/**
 * JSON.parse keeps a "__proto__" key as a plain property, but moleculer-web then copies the body
 * into the action's params with Object.assign, which would make it the params' prototype (and
 * its keys would slip past `$$strict`). Such keys are dropped while parsing.
 */
const dropProtoKeys = (key: string, value: unknown) => (key === "__proto__" ? undefined : value);

/** A trace id from the client is kept if it is a sane token; otherwise a new one is made. */
function traceIdOf(req: IncomingMessage): string {
	const given = req.headers["x-trace-id"];
	if (typeof given === "string" && /^[A-Za-z0-9._:-]{1,128}$/.test(given)) return given;
	return crypto.randomUUID();
}

/** Route hook: the trace id, client address and user agent into ctx.meta. */
export function passCallMeta(this: GatewayHttpThis, ctx: Context<unknown, CallMeta>, _route: unknown, req: GatewayRequest) {
	this.setCallMeta(ctx, req);
}

/** A request that still has a body on the wire: answered early, its connection is closed, not drained. */
export const hasBody = (req: IncomingMessage) => Number(req.headers["content-length"] ?? 0) > 0 || req.headers["transfer-encoding"] !== undefined;

/** Refuse before reading: the client must not be able to make us read what we will not use. */
export function refuseEarly(req: IncomingMessage, res: ServerResponse, next: Next, err: unknown) {
	if (hasBody(req)) res.setHeader("Connection", "close");
	next(err);
}

/** JSON bodies up to `limit`; one declared larger is refused at once (body-parser would drain it first). */
export function jsonBody(limit: number): RouteMiddleware {
	const parse = jsonBodyParser({ limit, strict: true, reviver: dropProtoKeys });
	return function (req, res, next) {
		if (Number(req.headers["content-length"] ?? 0) > limit) return refuseEarly(req, res, next, appError("PAYLOAD_TOO_LARGE", "Request body too large"));
		parse(req, res, next);
	};
}

/**
 * Page hardening for every answer: nothing from elsewhere runs or frames us. Swagger UI sets
 * inline styles, so /docs allows them; our own client needs none.
 */
const PAGE_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";
const DOCS_CSP = PAGE_CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'");

function setSecurityHeaders(req: IncomingMessage, res: ServerResponse) {
	res.setHeader("Content-Security-Policy", req.url?.startsWith("/docs") ? DOCS_CSP : PAGE_CSP);
	res.setHeader("X-Content-Type-Options", "nosniff");
	res.setHeader("Referrer-Policy", "no-referrer");
	res.setHeader("X-Frame-Options", "DENY");
}

export const GatewayHttpMixin = {
	settings: {
		// Every response, routed or not, gets X-Trace-Id; it becomes the context's requestID,
		// which Moleculer carries to every call on every node.
		rootCallOptions(this: GatewayHttpThis, options: { requestID?: string }, req: GatewayRequest, res: ServerResponse) {
			// The web client served from this origin is not a cross-origin caller: its Origin
			// header (sent on module scripts and POSTs) must not be held against CORS_ORIGINS.
			const origin = req.headers.origin;
			if (origin && req.headers.host && (origin === `http://${req.headers.host}` || origin === `https://${req.headers.host}`)) delete req.headers.origin;
			const traceId = traceIdOf(req);
			req.traceId = traceId;
			options.requestID = traceId;
			res.setHeader("X-Trace-Id", traceId);
			setSecurityHeaders(req, res);
		},

		cors: {
			// Exact match: moleculer-web compares strings by prefix ("http://localhost:300" would pass).
			origin: (origin: string) => config.corsOrigins.includes(origin),
			credentials: true,
			methods: ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
			allowedHeaders: ALLOWED_HEADERS,
			exposedHeaders: ["X-Trace-Id", "X-Next-Cursor", "Retry-After"],
			maxAge: 600,
		},

		// Answers of unhandled errors are shaped by sendError below; keep logs for 5xx only.
		log4XXResponses: false,
		logRequest: "debug",
		logResponse: "debug",
		logRequestParams: null,
		logResponseData: null,
	},

	methods: {
		/**
		 * The client's address. Behind N trusted proxies (TRUST_PROXY), each appends the address it
		 * got the request from to X-Forwarded-For, so the client is the Nth entry from the right;
		 * anything further left was written by the client and is not believed.
		 */
		clientIp(this: GatewayHttpThis, req: IncomingMessage): string {
			const direct = req.socket.remoteAddress ?? "unknown";
			const hops = config.trustProxyHops;
			if (hops === 0) return direct;
			const header = req.headers["x-forwarded-for"];
			const forwarded = (Array.isArray(header) ? header.join(",") : (header ?? ""))
				.split(",")
				.map(s => s.trim())
				.filter(Boolean);
			// Nearest first: the proxy that connected to us, then what each proxy saw.
			const chain = [direct, ...forwarded.reverse()];
			return chain[Math.min(hops, chain.length - 1)];
		},

		/** HTTPS to us, or (behind trusted proxies) to the proxy in front. */
		isSecureRequest(this: GatewayHttpThis, req: IncomingMessage): boolean {
			if ((req.socket as { encrypted?: boolean }).encrypted === true) return true;
			if (config.trustProxyHops === 0) return false;
			const proto = String(req.headers["x-forwarded-proto"] ?? "").split(",").pop()?.trim().toLowerCase();
			return proto === "https";
		},

		setCallMeta(this: GatewayHttpThis, ctx: Context<unknown, CallMeta>, req: GatewayRequest) {
			ctx.meta.traceId = req.traceId;
			ctx.meta.clientIp = this.clientIp(req);
			const ua = req.headers["user-agent"];
			if (ua) ctx.meta.userAgent = ua.slice(0, 256);
		},

		/** The contract's error envelope for every failure, routed or not. */
		sendError(this: GatewayHttpThis, req: GatewayRequest, res: ServerResponse, err: unknown) {
			if (res.headersSent) {
				this.logger.warn("Error after headers were sent", req.url, err);
				if (!res.writableEnded) res.end();
				return;
			}
			const envelope = toEnvelope(err);
			if (envelope.statusCode >= 500) {
				this.logger.error(`Request ${req.method} ${req.url} failed`, { traceId: req.traceId, err });
			}
			// Errors thrown before moleculer-web's CORS step (bad JSON, too large) still need
			// the headers, or the browser hides the answer from the client.
			if (!res.getHeader("Access-Control-Allow-Origin")) {
				try {
					this.writeCorsHeaders(req.$route ?? this.settings, req, res, false);
				} catch {
					// origin not allowed: leave CORS headers off
				}
			}
			const traceId = req.traceId ?? traceIdOf(req);
			res.setHeader("X-Trace-Id", traceId);
			if (envelope.retryAfter) res.setHeader("Retry-After", String(envelope.retryAfter));
			res.setHeader("Content-Type", "application/json; charset=utf-8");
			res.writeHead(envelope.statusCode);
			const body: Record<string, unknown> = {
				statusCode: envelope.statusCode,
				code: envelope.code,
				message: envelope.message,
				traceId,
			};
			if (envelope.details !== undefined) body.details = envelope.details;
			res.end(JSON.stringify(body));
		},
	},

	created() {
		// Fail at start, not at the first request, on a bad TRUST_PROXY.
		void config.trustProxyHops;
	},
} as unknown as Partial<ServiceSchema>;

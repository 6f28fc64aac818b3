/**
 * api: the gateway. REST through moleculer-web and Socket.IO through moleculer-io on the
 * same HTTP server. It authenticates, limits, routes and shapes errors; it holds no
 * domain logic (every alias is a call to the service that owns the data).
 *
 * Only the routes below and the namespaces /chat and /notifications (mixins/gateway-sockets.mixin.ts)
 * exist for clients: moleculer-io's default namespace "/" (whose `call` event reaches any
 * published action) is refused, and the mixins' own actions (broadcast, getClients, listAliases,
 * …) are callable on this node only. Authenticated routes check the token before they read a body.
 */
import crypto from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import path from "node:path";
import { Transform } from "node:stream";
import Busboy, { type BusboyHeaders } from "@fastify/busboy";
import type { Context, ServiceSchema, ServiceSettingSchema } from "moleculer";
import ApiGateway from "moleculer-web";
import serveStatic from "serve-static";
import { config } from "../lib/config";
import { appError, badRequest, forbidden, rateLimited, toEnvelope, unauthorized, validationError } from "../lib/errors";
import type { CallMeta } from "../lib/meta";
import { openApiDocument } from "../lib/openapi";
import { RateLimiter } from "../lib/rate-limiter";
import { type AccessSession, type AuthUser, extractBearer, verifyAccessSession } from "../lib/tokens";
import { ALLOWED_HEADERS, GatewaySocketsMixin, type GatewaySocketsThis } from "../mixins/gateway-sockets.mixin";

const MiB = 1024 * 1024;
const REFRESH_COOKIE = "refreshToken";
/** Large bodies (base64 uploads) one user may send at once on a node. */
const LARGE_BODIES_PER_USER = 2;

type Next = (err?: unknown) => void;
type Middleware = (this: ApiThis, req: GatewayRequest, res: ServerResponse, next: Next) => void;
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

interface GatewayRequest extends IncomingMessage {
	$ctx: Context<unknown, CallMeta>;
	$route?: { cors?: unknown; opts: { name?: string } };
	$action?: { name: string; roles?: string[] };
	$params?: Record<string, unknown>;
	/** The verified access token of an authenticated route, checked before the body is read. */
	$session?: AccessSession;
	traceId?: string;
}

interface ApiThis extends GatewaySocketsThis {
	userLimiter: RateLimiter;
	authLimiter: RateLimiter;
	/** Large bodies being read on this node: in all, and per user. */
	largeBodies: { total: number; byUser: Map<number, number> };
	handleUpload(req: GatewayRequest, res: ServerResponse, field: string, maxFiles: number): void;
	sendError(req: GatewayRequest, res: ServerResponse, err: unknown): void;
	clientIp(req: IncomingMessage): string;
	isSecureRequest(req: IncomingMessage): boolean;
	setCallMeta(ctx: Context<unknown, CallMeta>, req: GatewayRequest): void;
	writeCorsHeaders(route: unknown, req: IncomingMessage, res: ServerResponse, preflight: boolean): void;
}

/** A trace id from the client is kept if it is a sane token; otherwise a new one is made. */
function traceIdOf(req: IncomingMessage): string {
	const given = req.headers["x-trace-id"];
	if (typeof given === "string" && /^[A-Za-z0-9._:-]{1,128}$/.test(given)) return given;
	return crypto.randomUUID();
}

function parseCookies(header: string | undefined): Record<string, string> {
	const out: Record<string, string> = {};
	if (!header) return out;
	for (const part of header.split(";")) {
		const eq = part.indexOf("=");
		if (eq < 0) continue;
		const key = part.slice(0, eq).trim();
		const value = part.slice(eq + 1).trim();
		try {
			out[key] = decodeURIComponent(value);
		} catch {
			out[key] = value;
		}
	}
	return out;
}

function refreshCookie(token: string | null, secure: boolean): string {
	const parts = [
		`${REFRESH_COOKIE}=${token ? encodeURIComponent(token) : ""}`,
		"Path=/auth",
		"HttpOnly",
		"SameSite=Lax",
		token ? `Max-Age=${config.refreshTokenTtlSeconds}` : "Max-Age=0",
	];
	if (secure) parts.push("Secure");
	return parts.join("; ");
}

/** Route hook: the trace id, client address and user agent into ctx.meta. */
function passCallMeta(this: ApiThis, ctx: Context<unknown, CallMeta>, _route: unknown, req: GatewayRequest) {
	this.setCallMeta(ctx, req);
}

/** A request that still has a body on the wire: answered early, its connection is closed, not drained. */
const hasBody = (req: IncomingMessage) => Number(req.headers["content-length"] ?? 0) > 0 || req.headers["transfer-encoding"] !== undefined;

/** Refuse before reading: the client must not be able to make us read what we will not use. */
function refuseEarly(req: IncomingMessage, res: ServerResponse, next: Next, err: unknown) {
	if (hasBody(req)) res.setHeader("Connection", "close");
	next(err);
}

/** Authenticated routes: the token is checked first, so an anonymous body is never read or parsed. */
const requireToken: Middleware = function (req, res, next) {
	// A CORS preflight carries no token; moleculer-web answers it after the route's middlewares.
	if (req.method === "OPTIONS") return next();
	const token = extractBearer(req.headers.authorization);
	if (!token) return refuseEarly(req, res, next, unauthorized("Missing bearer token"));
	const session = verifyAccessSession(token);
	if (!session) return refuseEarly(req, res, next, unauthorized("Invalid or expired token"));
	if (this.revocations.isRevoked(session)) return refuseEarly(req, res, next, unauthorized("This session has ended"));
	req.$session = session;
	next();
};

/**
 * Large bodies (a 25 MiB file is 35 MiB of base64, parsed whole) are read a few at a time per
 * node and per user, so a flood cannot take the node's memory; the rest are told to retry.
 */
const largeBodySlot: Middleware = function (req, res, next) {
	if (req.method === "OPTIONS") return next();
	const userId = req.$session?.user.id ?? 0;
	const slots = this.largeBodies;
	const mine = slots.byUser.get(userId) ?? 0;
	if (mine >= LARGE_BODIES_PER_USER) return refuseEarly(req, res, next, rateLimited(1));
	if (slots.total >= config.largeBodiesInFlight) {
		return refuseEarly(req, res, next, appError("SERVICE_UNAVAILABLE", "Too many uploads in progress, try again in a moment", { retryAfter: 1 }));
	}
	slots.total++;
	slots.byUser.set(userId, mine + 1);
	res.once("close", () => {
		slots.total--;
		const left = (slots.byUser.get(userId) ?? 1) - 1;
		if (left > 0) slots.byUser.set(userId, left);
		else slots.byUser.delete(userId);
	});
	next();
};

/** The unauthenticated /auth routes: the per-address limit comes before the body is read. */
const authRateLimit: Middleware = function (req, res, next) {
	if (req.method === "OPTIONS") return next();
	const limit = this.authLimiter.take(this.clientIp(req));
	if (!limit.ok) return refuseEarly(req, res, next, rateLimited(limit.retryAfter));
	next();
};

/** JSON bodies up to `limit`; one declared larger is refused at once (body-parser would drain it first). */
function jsonBody(limit: number): Middleware {
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

/** The documentation page: Swagger UI from the swagger-ui-dist package, served locally (no CDN), no inline script. */
const DOCS_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Parley API</title>
<link rel="icon" href="/favicon.svg">
<link rel="stylesheet" href="/docs/ui/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/ui/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body></html>`;
const DOCS_INIT_JS = `window.ui = SwaggerUIBundle({ url: "/docs/openapi.json", dom_id: "#swagger-ui" });\n`;

const ApiService: ServiceSchema<ServiceSettingSchema, ApiThis> = {
	name: "api",
	// The Socket.IO side (namespaces, socket sessions, pushes, presence) is its own mixin.
	mixins: [ApiGateway as Partial<ServiceSchema>, GatewaySocketsMixin],

	settings: {
		port: config.port,
		ip: process.env.HOST || "0.0.0.0",

		// Every response, routed or not, gets X-Trace-Id; it becomes the context's requestID,
		// which Moleculer carries to every call on every node.
		rootCallOptions(this: ApiThis, options: { requestID?: string }, req: GatewayRequest, res: ServerResponse) {
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

		// The web client (public/) for every path no route claims. The page and its code are
		// revalidated on every load, so a new version reaches a user at once.
		assets: {
			folder: path.join(__dirname, "..", "public"),
			options: {
				index: "index.html",
				maxAge: "1h",
				setHeaders(res: ServerResponse, file: string) {
					if (/\.(html|js|css)$/.test(file)) res.setHeader("Cache-Control", "no-cache");
				},
			},
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

		routes: [
			{
				name: "public",
				path: "/",
				mappingPolicy: "restrict",
				authentication: false,
				authorization: false,
				bodyParsers: false,
				aliases: {
					"GET health": "api.health",
					"GET docs/openapi.json": "api.openapi",
					"GET docs"(_req: IncomingMessage, res: ServerResponse) {
						res.setHeader("Content-Type", "text/html; charset=utf-8");
						res.end(DOCS_HTML);
					},
					"GET docs/init.js"(_req: IncomingMessage, res: ServerResponse) {
						res.setHeader("Content-Type", "text/javascript; charset=utf-8");
						res.end(DOCS_INIT_JS);
					},
				},
			},
			{
				name: "docs-assets",
				path: "/docs/ui",
				mappingPolicy: "restrict",
				authentication: false,
				bodyParsers: false,
				// The package directory, without loading the package: its main module is the whole 1.5 MB UI bundle.
				use: [serveStatic(path.dirname(require.resolve("swagger-ui-dist/package.json")), { index: false, fallthrough: false })],
				aliases: {},
			},
			{
				name: "files",
				path: "/files",
				mappingPolicy: "restrict",
				// No token: the unguessable file id is the capability, so <img src> works.
				authentication: false,
				authorization: false,
				bodyParsers: false,
				aliases: { "GET :fileId": "files.download" },
				onBeforeCall(this: ApiThis, ctx: Context<unknown, CallMeta & { range?: string }>, _route: unknown, req: GatewayRequest) {
					this.setCallMeta(ctx, req);
					const range = req.headers.range;
					if (typeof range === "string") ctx.meta.range = range.slice(0, 100);
				},
			},
			{
				name: "upload",
				path: "/upload",
				mappingPolicy: "restrict",
				authentication: true,
				authorization: true,
				// Multipart bodies are streamed to the files service by handleUpload, never parsed here.
				bodyParsers: false,
				use: [requireToken],
				aliases: {
					"POST single"(this: ApiThis, req: GatewayRequest, res: ServerResponse) {
						this.handleUpload(req, res, "file", 1);
					},
					"POST multiple"(this: ApiThis, req: GatewayRequest, res: ServerResponse) {
						this.handleUpload(req, res, "files", 10);
					},
				},
				onBeforeCall: passCallMeta,
			},
			{
				name: "base64-uploads",
				path: "/",
				mappingPolicy: "restrict",
				authentication: true,
				authorization: true,
				// A 25 MiB file is ~35 MiB of base64: read only for a valid token, a few at a time.
				bodyParsers: false,
				use: [requireToken, largeBodySlot, jsonBody(35 * MiB)],
				aliases: {
					"POST upload/file-base64": "files.saveBase64",
					"POST users/upload-avatar": "users.uploadAvatar",
				},
				onBeforeCall: passCallMeta,
			},
			{
				name: "auth",
				path: "/auth",
				mappingPolicy: "restrict",
				authentication: false,
				authorization: false,
				bodyParsers: false,
				use: [authRateLimit, jsonBody(MiB)],
				aliases: {
					"POST register": "users.register",
					"POST login": "users.login",
					"POST refresh": "users.refresh",
					"POST logout": "users.logout",
				},
				onBeforeCall(this: ApiThis, ctx: Context<unknown, CallMeta>, _route: unknown, req: GatewayRequest) {
					this.setCallMeta(ctx, req);
					const cookie = parseCookies(req.headers.cookie)[REFRESH_COOKIE];
					if (cookie) ctx.meta.refreshCookie = cookie;
					// Logout with only an access token still ends that login.
					if (req.$action?.name === "users.logout") {
						const session = verifyAccessSession(extractBearer(req.headers.authorization));
						if (session) ctx.meta.session = { userId: session.user.id, sid: session.sid };
					}
				},
				onAfterCall(this: ApiThis, _ctx: Context<unknown, CallMeta>, _route: unknown, req: GatewayRequest, res: ServerResponse, data: unknown) {
					const secure = this.isSecureRequest(req) || process.env.NODE_ENV === "production";
					const issued = (data as { refreshToken?: string } | null)?.refreshToken;
					if (issued) {
						res.setHeader("Set-Cookie", refreshCookie(issued, secure));
						// A client that asks for it gets the refresh token in the HttpOnly cookie only,
						// out of reach of any script on its page.
						if (String(req.headers["x-refresh-transport"] ?? "").toLowerCase() === "cookie") {
							const { refreshToken: _dropped, ...rest } = data as Record<string, unknown>;
							return rest;
						}
					} else if (req.$action?.name === "users.logout") res.setHeader("Set-Cookie", refreshCookie(null, secure));
					return data;
				},
			},
			{
				name: "rest",
				path: "/",
				mappingPolicy: "restrict",
				authentication: true,
				authorization: true,
				bodyParsers: false,
				use: [requireToken, jsonBody(MiB)],
				aliases: {
					"GET users/me": "users.me",
					"GET users/search": "users.search",
					"POST users/batch": "users.batch",
					"POST users/change-password": "users.changePassword",
					"GET users": "users.list",
					"GET users/:id": "users.get",
					"PUT users/:id": "users.update",
					"PATCH users/:id": "users.update",
					"DELETE users/:id": "users.remove",
					"PUT users/:id/roles": "users.setRoles",
					"GET roles": "users.roles",
					"GET blocks": "conversations.blocked",
					"DELETE upload": "files.remove",

					"GET conversations": "conversations.list",
					"GET conversations/requests": "conversations.requests",
					"GET conversations/settings": "conversations.settings",
					"POST conversations": "conversations.create",
					"GET conversations/:conversationId": "conversations.get",
					"PATCH conversations/:conversationId": "conversations.update",
					"DELETE conversations/:conversationId": "conversations.remove",
					"POST conversations/:conversationId/accept": "conversations.accept",
					"POST conversations/:conversationId/decline": "conversations.decline",
					"POST conversations/:conversationId/mute": "conversations.mute",
					"POST conversations/:conversationId/pin": "conversations.pin",
					"POST conversations/:conversationId/hide": "conversations.hide",
					"POST conversations/:conversationId/read": "conversations.markRead",
					"GET conversations/:conversationId/nicknames": "conversations.nicknames",
					"POST conversations/:conversationId/nicknames": "conversations.setNickname",
					"GET conversations/:conversationId/messages": "messages.list",
					"POST conversations/:conversationId/messages": "messages.send",
					"DELETE conversations/:conversationId/messages": "conversations.clearHistory",

					"GET notifications": "notifications.list",
					"GET notifications/unread/count": "notifications.unreadCount",
					"PATCH notifications/read-all": "notifications.readAll",
					"POST notifications/broadcast": "notifications.broadcast",
					"GET notifications/:notificationId": "notifications.get",
					"POST notifications/:notificationId/read": "notifications.markRead",
					"PATCH notifications/:notificationId/read": "notifications.markRead",
					"DELETE notifications/:notificationId": "notifications.remove",
				},
				onBeforeCall: passCallMeta,
			},
		],
	},

	actions: {
		health: {
			handler(this: ApiThis, ctx: Context<unknown, CallMeta>) {
				const local = this.broker.services.map(s => s.name).filter(n => !n.startsWith("$"));
				const cluster = (this.broker.registry.getServiceList({ onlyAvailable: true, skipInternal: true }) as { name: string }[]).map(s => s.name);
				const ready = this.broker.started;
				if (!ready) ctx.meta.$statusCode = 503;
				return {
					status: ready ? "ok" : "starting",
					node: this.broker.nodeID,
					services: local,
					cluster: [...new Set(cluster)].sort(),
				};
			},
		},
		openapi: {
			handler() {
				return openApiDocument;
			},
		},
		// moleculer-web's own actions: for this node's code (and the REPL), never for another node.
		listAliases: { visibility: "protected" },
		addRoute: { visibility: "protected" },
		removeRoute: { visibility: "protected" },
	},

	methods: {
		/** The user of an authenticated route: its token was checked (and refused with 401) by requireToken. */
		async authenticate(this: ApiThis, _ctx: Context, _route: unknown, req: GatewayRequest): Promise<AuthUser> {
			// requireToken, the first middleware of every authenticated route, checked the token.
			if (!req.$session) throw unauthorized();
			return req.$session.user;
		},

		/** Role checks declared on actions (`roles: ["admin"]`), then the per-user rate limit. */
		async authorize(this: ApiThis, ctx: Context<unknown, CallMeta>, _route: unknown, req: GatewayRequest) {
			const user = ctx.meta.user;
			if (!user) throw unauthorized();
			const needed = req.$action?.roles;
			if (Array.isArray(needed) && needed.length > 0 && !needed.some(r => user.roles.includes(r))) {
				throw forbidden(`Requires role ${needed.join(" or ")}`);
			}
			const limit = this.userLimiter.take(`u:${user.id}`);
			if (!limit.ok) throw rateLimited(limit.retryAfter);
		},

		/**
		 * Multipart upload: each file is streamed to files.save (on whatever node runs it) as it
		 * arrives. If anything fails (too large, wrong type, too many files, the client went away),
		 * the files of this request that were already stored are discarded: all or nothing.
		 */
		handleUpload(this: ApiThis, req: GatewayRequest, res: ServerResponse, field: string, maxFiles: number) {
			const ctx = req.$ctx;
			const maxRequest = config.fileMaxBytes * maxFiles + MiB;
			if (Number(req.headers["content-length"] ?? 0) > maxRequest) {
				req.resume();
				return this.sendError(req, res, appError("PAYLOAD_TOO_LARGE", "The upload is too large"));
			}
			let busboy: Busboy;
			try {
				busboy = new Busboy({ headers: req.headers as BusboyHeaders, limits: { files: maxFiles, fileSize: config.fileMaxBytes, fields: 20, parts: maxFiles + 20 } });
			} catch {
				req.resume();
				return this.sendError(req, res, appError("UNSUPPORTED_MEDIA_TYPE", "Send multipart/form-data"));
			}
			let failure: unknown = null;
			let finished = false;
			const active = new Set<NodeJS.ReadableStream & { destroy(err?: Error): void }>();
			const uploads: Promise<{ fileId: string } | null>[] = [];
			// Busboy stalls if a file stream it still writes to is destroyed: while it parses, a
			// failure only marks the request (the rest is drained and discarded); once the request
			// is dead (aborted, malformed), the streams in flight are ended too.
			const fail = (err: unknown, endStreams = false) => {
				failure ??= err;
				if (endStreams) for (const file of active) file.destroy(err as Error);
			};
			busboy.on("file", (fieldname, file, filename, _encoding, mimetype) => {
				if (fieldname !== field) {
					file.resume();
					return fail(validationError(`Send the file in the field "${field}"`, [{ field: fieldname, type: "field", message: `Expected "${field}"` }]));
				}
				if (failure) return file.resume();
				active.add(file);
				file.on("limit", () => fail(appError("PAYLOAD_TOO_LARGE", `A file may be at most ${config.fileMaxBytes} bytes`)));
				uploads.push(
					ctx
						.call<{ fileId: string }, unknown>("files.save", file, { meta: { user: ctx.meta.user, traceId: req.traceId, filename, mimetype } })
						.catch(err => {
							fail(err);
							file.resume();
							return null;
						})
						.finally(() => active.delete(file)),
				);
			});
			busboy.on("filesLimit", () => fail(validationError(`At most ${maxFiles} file(s)`, [{ field, type: "arrayMax", message: `At most ${maxFiles}` }])));
			const finish = async () => {
				if (finished) return;
				finished = true;
				const results = await Promise.all(uploads);
				const stored = results.filter((r): r is { fileId: string } => !!r);
				if (!failure && stored.length === 0) failure = validationError(`No file in the field "${field}"`, [{ field, type: "required", message: "Missing file" }]);
				if (failure) {
					if (stored.length > 0) await ctx.call("files.discard", { fileIds: stored.map(r => r.fileId) }, { meta: { user: ctx.meta.user } }).catch(() => undefined);
					if (!res.writableEnded) this.sendError(req, res, failure);
					return;
				}
				res.statusCode = 201;
				res.setHeader("Content-Type", "application/json; charset=utf-8");
				res.end(JSON.stringify(maxFiles === 1 ? stored[0] : { files: stored }));
			};
			busboy.on("finish", () => void finish());
			busboy.on("error", err => {
				fail(badRequest(`Malformed upload: ${(err as Error).message}`), true);
				void finish();
			});
			// The client went away mid-upload: nothing of it is kept.
			req.on("aborted", () => {
				fail(badRequest("Upload interrupted"), true);
				void finish();
			});
			let received = 0;
			const counter = new Transform({
				transform(chunk: Buffer, _enc, done) {
					received += chunk.length;
					if (received > maxRequest) return done(appError("PAYLOAD_TOO_LARGE", "The upload is too large"));
					done(null, chunk);
				},
			});
			counter.on("error", err => {
				fail(err, true);
				req.unpipe(counter);
				req.resume();
				void finish();
			});
			req.pipe(counter).pipe(busboy);
		},

		/**
		 * The client's address. Behind N trusted proxies (TRUST_PROXY), each appends the address it
		 * got the request from to X-Forwarded-For, so the client is the Nth entry from the right;
		 * anything further left was written by the client and is not believed.
		 */
		clientIp(this: ApiThis, req: IncomingMessage): string {
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
		isSecureRequest(this: ApiThis, req: IncomingMessage): boolean {
			if ((req.socket as { encrypted?: boolean }).encrypted === true) return true;
			if (config.trustProxyHops === 0) return false;
			const proto = String(req.headers["x-forwarded-proto"] ?? "").split(",").pop()?.trim().toLowerCase();
			return proto === "https";
		},

		setCallMeta(this: ApiThis, ctx: Context<unknown, CallMeta>, req: GatewayRequest) {
			ctx.meta.traceId = req.traceId;
			ctx.meta.clientIp = this.clientIp(req);
			const ua = req.headers["user-agent"];
			if (ua) ctx.meta.userAgent = ua.slice(0, 256);
		},

		/** The contract's error envelope for every failure, routed or not. */
		sendError(this: ApiThis, req: GatewayRequest, res: ServerResponse, err: unknown) {
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

	created(this: ApiThis) {
		this.userLimiter = new RateLimiter(config.rateLimit);
		this.authLimiter = new RateLimiter(config.rateLimitAuth);
		this.largeBodies = { total: 0, byUser: new Map() };
		// Fail at start, not at the first request, on a bad TRUST_PROXY.
		void config.trustProxyHops;
	},

	stopped(this: ApiThis) {
		this.userLimiter.stop();
		this.authLimiter.stop();
	},
};

export default ApiService;

/**
 * notifications: one notification per recipient of a durable event (message.created,
 * group_invite.created, system.broadcast), consumed in the consumer group "notifications" so
 * several nodes share the work. A redelivered event creates nothing twice: each notification has
 * a unique key (event, user). Every change reaches all of the user's devices, with the count.
 */
import crypto from "node:crypto";
import type { Context, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { encodeCursor, decodeCursor, idRule, limitRule } from "../lib/chat";
import { EVENTS } from "../lib/constants";
import { CHANNELS } from "../lib/durable-events";
import { Batcher } from "../lib/batcher";
import {
	type BroadcastPayloads,
	callAction,
	type GroupInviteEvent,
	type MessageCreatedEvent,
	type MessageDeletedEvent,
	type NotificationKind,
	type SystemBroadcastEvent as BroadcastEvent,
} from "../lib/contracts";
import { forgetOnOtherNodes } from "../lib/read-cache";
import { UnreadCounts } from "../lib/unread-counts";
import { appError, notFound, validationError } from "../lib/errors";
import type { CallMeta } from "../lib/meta";
import { arrayOf, errorExample, errorResponse, errors, NEXT_CURSOR, noContent, ok, ref, schema, TIMESTAMP } from "../lib/api-schemas";
import { userOf } from "../middlewares/authorize.middleware";
import { createDocsMixin, type Doc, type DocsMixinThis, newOrderedId } from "../mixins/docs.mixin";
import { PublisherMixin, type PublisherThis } from "../mixins/publisher.mixin";
import { PushMixin, type PushItem, type PushThis, userRoom } from "../mixins/push.mixin";

type Ctx<P = Record<string, never>> = Context<P, CallMeta>;
const NSP = "/notifications";
/** A broadcast is written in batches with a pause between them, so chat traffic keeps flowing. */
const BROADCAST_BATCH = 200;
const BROADCAST_PAUSE_MS = 25;
/** How long a change waits for each other notifications node to drop the counts it keeps. */
const FORGET_TIMEOUT_MS = 2_000;

interface NotificationDoc extends Doc {
	user_id: number;
	type: NotificationKind | "group_invite" | "system";
	title: string;
	content: string;
	is_read: boolean;
	related_id: string | null;
	sender_id: number | null;
	sender_name: string | null;
	sender_avatar: string | null;
	conversation_name: string | null;
	message_type: string | null;
	/** The message a `message` / `message_request` / `mention` notification quotes: it goes when that message is deleted. */
	message_id?: string | null;
	event_key: string;
	created_at: Date;
}

type NewNotification = Omit<NotificationDoc, "_id" | "event_key" | "is_read" | "created_at" | "user_id">;

/** One notification for one user, keyed by (event, user) so a redelivered event makes none again. */
interface Delivery {
	userId: number;
	eventKey: string;
	n: NewNotification;
}

interface NotifThis extends DocsMixinThis<"notifications">, PushThis, PublisherThis {
	present(n: NotificationDoc): ReturnType<typeof presentNotification>;
	deliverMany(list: Delivery[]): Promise<void>;
	writeNotifications(batches: Delivery[][]): Promise<void[]>;
	deliveries: Batcher<Delivery[]>;
	unread: UnreadCounts;
	countsChanged(userIds: number[] | "all", requestID?: string | null): Promise<void>;
	pushCount(userIds: number[]): Promise<void>;
	countItems(userIds: number[]): Promise<PushItem[]>;
	own(ctx: Ctx<unknown>, id: string): Promise<NotificationDoc>;
	retryLater(raw: unknown, err: unknown): Promise<never>;
}

function presentNotification(n: NotificationDoc) {
	const created = new Date(n.created_at).toISOString();
	return {
		id: n._id,
		_id: n._id,
		user_id: n.user_id,
		type: n.type,
		title: n.title,
		content: n.content,
		is_read: n.is_read,
		isRead: n.is_read,
		related_id: n.related_id,
		sender_id: n.sender_id,
		sender_name: n.sender_name,
		sender_avatar: n.sender_avatar,
		conversation_name: n.conversation_name,
		message_type: n.message_type,
		created_at: created,
		createdAt: created,
	};
}

const isPositiveInt = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v > 0;

/** What a recipient of message.created may be notified of. */
const MESSAGE_KINDS: ReadonlySet<unknown> = new Set<NotificationKind>(["message", "message_request", "mention"]);

/**
 * A message's notification for one recipient, by kind. A `mention` names the sender (and the group),
 * so that it reads apart from the conversation's plain messages.
 */
function messageNotification(event: MessageCreatedEvent, kind: NotificationKind): NewNotification {
	const group = event.conversationType === "group";
	const title =
		kind === "message_request"
			? `${event.senderName} wants to message you`
			: kind === "mention"
				? group
					? `${event.senderName} mentioned you in ${event.conversationName ?? "a group"}`
					: `${event.senderName} mentioned you`
				: group
					? (event.conversationName ?? "Group")
					: event.senderName;
	return {
		type: kind,
		title,
		content: String(event.content ?? "").slice(0, 200),
		related_id: event.conversationId,
		sender_id: event.senderId,
		sender_name: event.senderName,
		sender_avatar: event.senderAvatar ?? null,
		conversation_name: event.conversationName ?? null,
		message_type: event.messageType ?? "text",
		// message.created's eventId is the message's id.
		message_id: event.eventId,
	};
}

/** A malformed event is not retried into success: it fails at once and ends in the dead-letter queue. */
function checkEvent(ok: boolean, channel: string) {
	if (!ok) throw appError("BAD_REQUEST", `Malformed ${channel} event`);
}

const NotificationsService: ServiceSchema<ServiceSettingSchema, NotifThis> = {
	name: "notifications",
	mixins: [
		createDocsMixin<"notifications">({
			collections: {
				notifications: {
					definition: {
						user_id: Number,
						type: String,
						title: String,
						content: String,
						is_read: Boolean,
						related_id: { type: String, default: null },
						sender_id: { type: Number, default: null },
						sender_name: { type: String, default: null },
						sender_avatar: { type: String, default: null },
						conversation_name: { type: String, default: null },
						message_type: { type: String, default: null },
						message_id: { type: String, default: null },
						event_key: String,
						created_at: Date,
					},
					indexes: [
						{ fields: { event_key: 1 }, unique: true },
						{ fields: { user_id: 1, created_at: -1 } },
						{ fields: { user_id: 1, is_read: 1 } },
						{ fields: { user_id: 1 } },
						{ fields: { message_id: 1 } },
					],
				},
			},
		}),
		PushMixin,
		PublisherMixin,
	],

	channels: {
		[CHANNELS.messageCreated]: {
			group: "notifications",
			async handler(this: NotifThis, event: MessageCreatedEvent, raw: unknown) {
				checkEvent(
					!!event &&
						typeof event.eventId === "string" &&
						typeof event.conversationId === "string" &&
						isPositiveInt(event.senderId) &&
						Array.isArray(event.recipients) &&
						event.recipients.every(r => isPositiveInt(r?.userId) && MESSAGE_KINDS.has(r.type)),
					CHANNELS.messageCreated,
				);
				try {
					// One notification per (message, user) (the unique event key): if a user were listed
					// twice, its mention wins over the plain message it replaces.
					const kinds = new Map<number, NotificationKind>();
					for (const r of event.recipients) {
						if (r.userId === event.senderId) continue;
						if (kinds.get(r.userId) !== "mention") kinds.set(r.userId, r.type);
					}
					await this.deliverMany([...kinds].map(([userId, kind]) => ({ userId, eventKey: `${event.eventId}:${userId}`, n: messageNotification(event, kind) })));
				} catch (err) {
					await this.retryLater(raw, err);
				}
			},
		},

		[CHANNELS.groupInviteCreated]: {
			group: "notifications",
			async handler(this: NotifThis, event: GroupInviteEvent, raw: unknown) {
				checkEvent(!!event && typeof event.eventId === "string" && typeof event.conversationId === "string" && Array.isArray(event.userIds) && event.userIds.every(isPositiveInt), CHANNELS.groupInviteCreated);
				try {
					await this.deliverMany(
						event.userIds
							.filter(userId => userId !== event.inviterId)
							.map(userId => ({
								userId,
								eventKey: `${event.eventId}:${userId}`,
								n: {
									type: "group_invite",
									title: event.conversationName ?? "New group",
									content: `${event.inviterName} added you to ${event.conversationName ?? "a group"}`,
									related_id: event.conversationId,
									sender_id: event.inviterId,
									sender_name: event.inviterName,
									sender_avatar: null,
									conversation_name: event.conversationName ?? null,
									message_type: null,
								},
							})),
					);
				} catch (err) {
					await this.retryLater(raw, err);
				}
			},
		},

		/** An unsent message must not live on in notifications: they go, on every device of their users. */
		[CHANNELS.messageDeleted]: {
			group: "notifications",
			async handler(this: NotifThis, event: MessageDeletedEvent, raw: unknown) {
				checkEvent(!!event && typeof event.messageId === "string" && event.messageId.length > 0 && event.messageId.length <= 64, CHANNELS.messageDeleted);
				try {
					const gone = (await this.stores.notifications.find({ message_id: event.messageId })) as NotificationDoc[];
					if (gone.length === 0) return;
					await this.stores.notifications.removeMany({ message_id: event.messageId });
					await this.countsChanged(gone.filter(n => !n.is_read).map(n => n.user_id));
					await this.push(
						null,
						gone.map(n => ({ namespace: NSP, rooms: [userRoom(n.user_id)], event: "notification:deleted", payload: { notificationId: n._id } })),
					);
					await this.pushCount(gone.filter(n => !n.is_read).map(n => n.user_id));
				} catch (err) {
					await this.retryLater(raw, err);
				}
			},
		},

		[CHANNELS.systemBroadcast]: {
			group: "notifications",
			// One broadcast at a time, written in paced batches.
			maxInFlight: 1,
			async handler(this: NotifThis, event: BroadcastEvent, raw: unknown) {
				checkEvent(!!event && typeof event.eventId === "string" && typeof event.title === "string" && (event.userIds === undefined || (Array.isArray(event.userIds) && event.userIds.every(isPositiveInt))), CHANNELS.systemBroadcast);
				try {
					let afterId = 0;
					const explicit = event.userIds ? [...new Set(event.userIds)] : null;
					for (let page = 0; ; page++) {
						const ids = explicit ? explicit.slice(page * BROADCAST_BATCH, (page + 1) * BROADCAST_BATCH) : await callAction(this.broker, "users.ids", { afterId, limit: BROADCAST_BATCH });
						if (ids.length === 0) break;
						await this.deliverMany(
							ids.map(userId => ({
								userId,
								eventKey: `${event.eventId}:${userId}`,
								n: { type: "system", title: event.title, content: event.content, related_id: null, sender_id: event.senderId ?? null, sender_name: null, sender_avatar: null, conversation_name: null, message_type: null },
							})),
						);
						afterId = ids[ids.length - 1];
						await new Promise(r => setTimeout(r, BROADCAST_PAUSE_MS));
					}
				} catch (err) {
					await this.retryLater(raw, err);
				}
			},
		},
	},

	events: {
		/** A deleted account's notifications go with it. */
		async [EVENTS.userDeleted](this: NotifThis, ctx: Context<BroadcastPayloads[typeof EVENTS.userDeleted]>) {
			if (!isPositiveInt(ctx.params.userId)) return;
			await this.stores.notifications.removeMany({ user_id: ctx.params.userId });
			await this.countsChanged([ctx.params.userId]);
		},
	},

	actions: {
		list: {
			rest: "GET /notifications",
			socket: { namespace: "/notifications", event: "notification:list" },
			openapi: {
				operationId: "listNotifications",
				tag: "Notifications",
				summary: "The caller's notifications, newest first",
				description: "A page at a time: while there is more, the answer has an `X-Next-Cursor` header to pass back as `before`.",
				params: {
					unreadOnly: "`true`: only the unread ones.",
					limit: "At most this many notifications.",
					before: "The `X-Next-Cursor` header of the previous page, passed back unchanged. Leave it out for the first page.",
				},
				responses: {
					...errors(401, 429, 503),
					200: ok("One page of notifications.", arrayOf(schema("Notification")), NEXT_CURSOR),
					...errors(400),
				},
			},
			params: {
				$$strict: "remove",
				unreadOnly: { type: "boolean", convert: true, optional: true, default: false },
				limit: limitRule(50),
				before: { type: "string", optional: true, max: 200 },
			},
			async handler(this: NotifThis, ctx: Ctx<{ unreadOnly: boolean; limit: number; before?: string }>) {
				const me = userOf(ctx);
				const cursor = ctx.params.before ? decodeCursor(ctx.params.before) : null;
				if (ctx.params.before && !cursor) throw validationError("Invalid cursor", [{ field: "before", type: "cursor", message: "Pass back the X-Next-Cursor value" }]);
				const query: Record<string, unknown> = { user_id: me.id };
				if (ctx.params.unreadOnly) query.is_read = false;
				if (cursor) query.$or = [{ created_at: { $lt: cursor.at } }, { created_at: cursor.at, _id: { $lt: cursor.id } }];
				const rows = (await this.stores.notifications.find(query, { sort: ["-created_at", "-_id"], limit: ctx.params.limit + 1 })) as NotificationDoc[];
				const page = rows.slice(0, ctx.params.limit);
				if (rows.length > ctx.params.limit) {
					const last = page[page.length - 1];
					ctx.meta.$responseHeaders = { "X-Next-Cursor": encodeCursor(last.created_at, last._id) };
				}
				return page.map(n => this.present(n));
			},
		},

		unreadCount: {
			rest: "GET /notifications/unread/count",
			openapi: {
				operationId: "countUnreadNotifications",
				tag: "Notifications",
				summary: "How many of the caller's notifications are unread",
				description: "The `/notifications` socket also pushes this count (`notification:count`) on connect and after every change.",
				responses: {
					...errors(401, 429, 503),
					200: ok("The unread count.", schema("UnreadCount")),
				},
			},
			async handler(this: NotifThis, ctx: Ctx) {
				const me = userOf(ctx).id;
				return { count: (await this.unread.get([me])).get(me) ?? 0 };
			},
		},

		get: {
			rest: "GET /notifications/:notificationId",
			socket: { namespace: "/notifications", event: "notification:get" },
			openapi: {
				operationId: "getNotification",
				tag: "Notifications",
				summary: "One of the caller's notifications",
				params: { notificationId: "The notification's id. Another user's notification answers 404, like one that does not exist." },
				responses: {
					...errors(401, 429, 503),
					...errors(400),
					404: ref("responses", "NotificationNotFound"),
					200: ok("The notification.", schema("Notification")),
				},
			},
			params: { $$strict: "remove", notificationId: idRule },
			async handler(this: NotifThis, ctx: Ctx<{ notificationId: string }>) {
				return this.present(await this.own(ctx, ctx.params.notificationId));
			},
		},

		markRead: {
			rest: ["POST /notifications/:notificationId/read", "PATCH /notifications/:notificationId/read"],
			socket: { namespace: "/notifications", event: "notification:read" },
			openapi: {
				operationId: ["markNotificationRead", "patchNotificationRead"],
				tag: "Notifications",
				summary: "Mark one of the caller's notifications read",
				description:
					"Both POST and PATCH do it. The caller's devices get `notification:read` and `notification:count` on the `/notifications` socket; " +
					"a notification already read is returned unchanged.",
				params: { notificationId: "The notification's id. Another user's notification answers 404, like one that does not exist." },
				responses: {
					...errors(401, 429, 503),
					...errors(400),
					404: ref("responses", "NotificationNotFound"),
					200: ok("The notification, read.", schema("Notification")),
				},
			},
			params: { $$strict: "remove", notificationId: idRule },
			async handler(this: NotifThis, ctx: Ctx<{ notificationId: string }>) {
				const n = await this.own(ctx, ctx.params.notificationId);
				if (n.is_read) return this.present(n);
				const updated = (await this.stores.notifications.updateById(n._id, { $set: { is_read: true } })) as NotificationDoc;
				await this.countsChanged([n.user_id], ctx.requestID);
				await this.push(ctx, [{ namespace: NSP, rooms: [userRoom(n.user_id)], event: "notification:read", payload: { notificationId: n._id, is_read: true } }]);
				await this.pushCount([n.user_id]);
				return this.present(updated);
			},
		},

		readAll: {
			rest: "PATCH /notifications/read-all",
			socket: { namespace: "/notifications", event: "notification:read-all" },
			openapi: {
				operationId: "markAllNotificationsRead",
				tag: "Notifications",
				summary: "Mark all the caller's notifications read",
				description: "If any was unread, the caller's devices get `notification:count` on the `/notifications` socket.",
				responses: {
					...errors(401, 429, 503),
					200: ok("Nothing is unread now.", schema("ReadAllResult")),
				},
			},
			async handler(this: NotifThis, ctx: Ctx) {
				const me = userOf(ctx);
				const changed = await this.stores.notifications.updateMany({ user_id: me.id, is_read: false }, { $set: { is_read: true } });
				if (changed > 0) {
					await this.countsChanged([me.id], ctx.requestID);
					await this.pushCount([me.id]);
				}
				return { count: 0 };
			},
		},

		remove: {
			rest: "DELETE /notifications/:notificationId",
			socket: { namespace: "/notifications", event: "notification:delete", ack: "none" },
			openapi: {
				operationId: "deleteNotification",
				tag: "Notifications",
				summary: "Delete one of the caller's notifications",
				description: "The caller's devices get `notification:deleted`, and `notification:count` if it was unread.",
				params: { notificationId: "The notification's id. Another user's notification answers 404, like one that does not exist." },
				responses: {
					...errors(401, 429, 503),
					...errors(400),
					404: ref("responses", "NotificationNotFound"),
					204: noContent("Deleted."),
				},
			},
			params: { $$strict: "remove", notificationId: idRule },
			async handler(this: NotifThis, ctx: Ctx<{ notificationId: string }>) {
				const n = await this.own(ctx, ctx.params.notificationId);
				await this.stores.notifications.removeMany({ _id: n._id });
				if (!n.is_read) await this.countsChanged([n.user_id], ctx.requestID);
				await this.push(ctx, [{ namespace: NSP, rooms: [userRoom(n.user_id)], event: "notification:deleted", payload: { notificationId: n._id } }]);
				if (!n.is_read) await this.pushCount([n.user_id]);
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		broadcast: {
			rest: "POST /notifications/broadcast",
			roles: ["admin"],
			openapi: {
				operationId: "broadcastNotification",
				tag: "Notifications",
				summary: "Send a system notification to some or all users (admin only)",
				description:
					"Queues the broadcast and answers 202 at once. The notifications service then writes one `system` notification per user in paced batches, " +
					"so chat traffic keeps flowing; each recipient's devices get `notification:created` and `notification:count`. " +
					"Admin only: the token must carry the `admin` role, and the role is confirmed in the database.",
				params: {
					title: "Trimmed.",
					content: "Trimmed.",
					userIds: "The recipients (numeric strings are accepted too; duplicates count once). Left out: every user.",
				},
				responses: {
					...errors(401, 429, 503),
					202: ok("Queued.", schema("BroadcastResult")),
					403: errorResponse("`FORBIDDEN`: the caller is not an admin.", {
						role: errorExample(403, "FORBIDDEN", "Requires role admin"),
					}),
					...errors(400, 413),
				},
			},
			params: {
				$$strict: "remove",
				title: { type: "string", trim: true, min: 1, max: 200 },
				content: { type: "string", trim: true, min: 1, max: 2000 },
				userIds: { type: "array", optional: true, min: 1, max: 10_000, items: { type: "number", integer: true, positive: true, convert: true } },
			},
			async handler(this: NotifThis, ctx: Ctx<{ title: string; content: string; userIds?: number[] }>) {
				// The roles in the token are not enough: the Authorize middleware confirms "admin" from the database.
				const me = userOf(ctx);
				const userIds = ctx.params.userIds ? [...new Set(ctx.params.userIds)] : undefined;
				const queued = userIds ? userIds.length : await callAction(ctx, "users.count", {});
				await this.publishEvent(CHANNELS.systemBroadcast, { eventId: crypto.randomUUID(), title: ctx.params.title, content: ctx.params.content, senderId: me.id, userIds });
				ctx.meta.$statusCode = 202;
				return { queued };
			},
		},

		/** Each notifications node: count these users' unread notifications again, called by the node that changed them (not routed). */
		forgetCounts: {
			visibility: "public",
			params: { userIds: [{ type: "array", max: 100_000, items: { type: "number", integer: true, positive: true } }, { type: "equal", value: "all" }] },
			handler(this: NotifThis, ctx: Context<{ userIds: number[] | "all" }>) {
				this.unread.forget(ctx.params.userIds);
				return null;
			},
		},

		ping: {
			socket: { namespace: "/notifications", event: "notification:ping", reply: "pong" },
			openapi: {
				tag: "Notifications",
				summary: "Check that the `/notifications` socket is alive: answers the server's time, which is also emitted back to the socket as `pong`.",
				ack: {
					type: "object",
					required: ["timestamp"],
					properties: { timestamp: TIMESTAMP },
				},
			},
			handler(this: NotifThis) {
				return { timestamp: new Date().toISOString() };
			},
		},
	},

	methods: {
		present(n: NotificationDoc) {
			return presentNotification(n);
		},

		/** Another user's notification looks like none at all. */
		async own(this: NotifThis, ctx: Ctx<unknown>, id: string) {
			const me = userOf(ctx);
			const n = (await this.stores.notifications.findById(id)) as NotificationDoc | null;
			if (!n || n.user_id !== me.id) throw notFound("Notification");
			return n;
		},

		/** Store these notifications (those not stored already) and push them; settles once written. */
		deliverMany(this: NotifThis, list: Delivery[]) {
			return list.length === 0 ? Promise.resolve() : this.deliveries.add(list);
		},

		/**
		 * One batch of deliveries, from however many events: one insert for all of them, one count
		 * query for all their users, one push for everything. A redelivered event's notifications
		 * exist already (unique event_key) and are skipped, not pushed again.
		 */
		async writeNotifications(this: NotifThis, batches: Delivery[][]) {
			const now = new Date();
			// One batch shares its time; the ids, made here in order (ObjectIds grow), keep the order of
			// its events for the lists, which sort by (created_at, _id). NeDB takes them as strings.
			const docs = batches.flat().map(d => ({ _id: newOrderedId(), ...d.n, user_id: d.userId, event_key: d.eventKey, is_read: false, created_at: now }));
			const stored = (await this.stores.notifications.insertMany(docs)) as NotificationDoc[];
			if (stored.length > 0) {
				// The counts kept here move by what was stored; other notifications nodes count again.
				this.unread.added(stored.map(n => n.user_id));
				await forgetOnOtherNodes(this.broker, "notifications.forgetCounts", { userIds: [...new Set(stored.map(n => n.user_id))] }, FORGET_TIMEOUT_MS);
				const items: PushItem[] = stored.map(doc => ({ namespace: NSP, rooms: [userRoom(doc.user_id)], event: "notification:created", payload: this.present(doc) }));
				await this.push(null, [...items, ...(await this.countItems(stored.map(n => n.user_id)))]);
			}
			return batches.map(() => undefined);
		},

		/** notification:count for these users: the counts kept in memory, the missing ones in one query (lib/unread-counts.ts). */
		async countItems(this: NotifThis, userIds: number[]) {
			const users = [...new Set(userIds)];
			const counts = await this.unread.get(users);
			return users.map(userId => ({ namespace: NSP, rooms: [userRoom(userId)], event: "notification:count", payload: { count: counts.get(userId) ?? 0 } }));
		},

		/** Unread notifications of these users changed other than by an insert: here and on every other notifications node. */
		async countsChanged(this: NotifThis, userIds: number[] | "all", requestID?: string | null) {
			if (userIds !== "all" && userIds.length === 0) return;
			this.unread.forget(userIds);
			await forgetOnOtherNodes(this.broker, "notifications.forgetCounts", { userIds: userIds === "all" ? "all" : [...new Set(userIds)] }, FORGET_TIMEOUT_MS, requestID);
		},

		async pushCount(this: NotifThis, userIds: number[]) {
			if (userIds.length > 0) await this.push(null, await this.countItems(userIds));
		},

		/**
		 * A failure that may pass (the store is away): wait a little before letting the channel
		 * redeliver, so the bounded retries span seconds rather than milliseconds.
		 */
		async retryLater(raw: unknown, err: unknown): Promise<never> {
			const headers = (raw as { properties?: { headers?: Record<string, unknown> } } | undefined)?.properties?.headers ?? {};
			const attempt = Number(headers["x-redelivered-count"] ?? 0);
			await new Promise(r => setTimeout(r, Math.min(5_000, 250 * 2 ** attempt)));
			throw err;
		},
	},

	created(this: NotifThis) {
		// Notifications may wait 10 ms: under load, one write then takes many messages' worth.
		this.deliveries = new Batcher(batches => this.writeNotifications(batches), { lingerMs: 10 });
		this.unread = new UnreadCounts(async ids => (await this.stores.notifications.countEach("user_id", ids, { is_read: false })) as Map<number, number>);
	},
};

export default NotificationsService;

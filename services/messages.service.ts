/**
 * messages: sending, editing, deleting, receipts, history and search. Owns the collection
 * messages. Every message gets `seq`, its position in the conversation: 1, 2, 3 … with no gap,
 * because a seq exists only as a stored message (unique per conversation) and a send that
 * loses a race for a seq takes the next one. A clientId already used by the sender in the
 * conversation returns the first message and pushes nothing again.
 *
 * Writes to one stored message (edit, delete, receipts, the outbox flag) run one at a time in
 * this process: FerretDB 1.x applies an update by reading the document and writing all of it
 * back, so two updates of one message at once lose one of them (a delete came back undone when
 * the outbox flag was set at the same moment).
 */
import crypto from "node:crypto";
import type { Context, ServiceSchema, ServiceSettingSchema } from "moleculer";
import {
	type ConversationMeta,
	MAX_CONTENT,
	type MemberMeta,
	type MessageDoc,
	type SenderProfile,
	fileIdOfPath,
	fileIdsRule,
	filePath,
	idRule,
	lastMessageOf,
	limitRule,
	notificationTargetsOf,
	presentMessage,
	userIdRule,
} from "../lib/chat";
import { EVENTS } from "../lib/constants";
import { type BroadcastPayloads, callAction, type NotificationTargets } from "../lib/contracts";
import { CHANNELS, DEAD_LETTER_QUEUE, prefixed } from "../lib/durable-events";
import { countMetric, setMetric } from "../lib/metrics";
import { appError, forbidden, notFound, validationError } from "../lib/errors";
import { ATTACHMENT_PATTERN } from "../lib/file-ids";
import { SerialWork } from "../lib/serial-work";
import type { CallMeta } from "../lib/meta";
import { arrayOf, errorExample, errorResponse, errors, ok, ref, schema } from "../lib/api-schemas";
import { memberOf, userOf } from "../middlewares/authorize.middleware";
import { createDocsMixin, type DocsMixinThis, escapeRegex, isDuplicateKeyError } from "../mixins/docs.mixin";
import { PublisherMixin, type PublisherThis } from "../mixins/publisher.mixin";
import { PushMixin, type PushThis, userRoom } from "../mixins/push.mixin";

type Ctx<P = Record<string, never>> = Context<P, CallMeta>;
/** What messages.send already knows of the conversation, so the notification step need not ask for it. */
type KnownConversation = Pick<ConversationMeta["conv"], "type" | "name" | "status" | "participants"> & { blockedBy: number[]; muted: number[] };
/** A context, or the broker itself for work that no request started (the outbox sweep). */
type Caller = { call(action: string, params?: unknown): Promise<unknown> };

const PROFILE_TTL_MS = 60_000;
/** How often the queue metrics are read (when metrics are on). */
const METRICS_INTERVAL_MS = 15_000;
const MAX_CACHED_HEADS = 10_000;

interface MessagesThis extends DocsMixinThis<"messages">, PushThis, PublisherThis {
	outboxTimer: NodeJS.Timeout | null;
	metricsTimer: NodeJS.Timeout | null;
	reportQueueMetrics(): Promise<void>;
	notifiedBatch: Set<string>;
	notifiedTimer: NodeJS.Timeout | null;
	announce(msg: MessageDoc, sender: SenderProfile, known?: KnownConversation): Promise<void>;
	markNotified(messageId: string): void;
	flushNotified(): Promise<void>;
	sweepOutbox(): Promise<void>;
	heads: Map<string, number>;
	locks: SerialWork;
	profiles: Map<number, { profile: SenderProfile; until: number }>;
	access(ctx: Ctx<unknown>, conversationId: string, userId: number): Promise<{ conv: ConversationMeta["conv"]; membership: MemberMeta }>;
	withLock<T>(key: string, fn: () => Promise<T>): Promise<T>;
	withLocks<T>(keys: string[], fn: () => Promise<T>): Promise<T>;
	audience(ctx: Ctx<unknown>, conversationId: string, userId: number, either: boolean): Promise<number[]>;
	hideReceiptsFor(ctx: Ctx<unknown>, msgs: ReturnType<typeof presentMessage>[], viewerId: number): Promise<ReturnType<typeof presentMessage>[]>;
	releaseFiles(ctx: Ctx<unknown>, refs: string[]): void;
	maxSeq(conversationId: string): Promise<number>;
	insertWithSeq(conversationId: string, doc: Omit<MessageDoc, "_id" | "seq" | "seq_key">): Promise<{ msg: MessageDoc; created: boolean }>;
	senderProfiles(caller: Caller, ids: number[]): Promise<Map<number, SenderProfile>>;
	present(ctx: Ctx<unknown>, msgs: MessageDoc[]): Promise<ReturnType<typeof presentMessage>[]>;
	loadOwnMessage(ctx: Ctx<unknown>, messageId: string, userId: number): Promise<{ msg: MessageDoc; conv: ConversationMeta["conv"] }>;
	record(ctx: Ctx<unknown>, msg: MessageDoc): Promise<void>;
}

const SYSTEM_TEXT: Record<string, string> = {
	group_created: "created the group",
	member_added: "added a member",
	member_removed: "removed a member",
	member_left: "left the group",
	admin_changed: "is the new admin",
	moderator_promoted: "made a member moderator",
	moderator_demoted: "removed a moderator",
	renamed: "renamed the group",
	avatar_changed: "changed the group picture",
};

/** A file of this server: its id, its /files/<id> path, or a URL ending in that path. */
const attachmentRule = { type: "string", max: 2048, pattern: ATTACHMENT_PATTERN.source } as const;

const MessagesService: ServiceSchema<ServiceSettingSchema, MessagesThis> = {
	name: "messages",
	mixins: [
		createDocsMixin<"messages">({
			collections: {
				messages: {
					definition: {
						conversation_id: String,
						sender_id: Number,
						type: String,
						content: String,
						attachments: [String],
						seq: Number,
						seq_key: String,
						client_id: { type: String, default: null },
						dedupe_key: String,
						seen_by: [Number],
						delivered_to: [Number],
						edited_at: { type: Date, default: null },
						deleted: Boolean,
						system_data: { type: Object, default: null },
						// Present (true) only while message.created is not yet on the bus: the outbox.
						outbox: { type: Boolean, default: undefined },
						// The outbox flag of messages stored before it became sparse (cleared in started()).
						notified: { type: Boolean, default: undefined },
						created_at: Date,
						updated_at: Date,
					},
					indexes: [
						{ fields: { seq_key: 1 }, unique: true },
						{ fields: { dedupe_key: 1 }, unique: true },
						{ fields: { conversation_id: 1, seq: -1 } },
						{ fields: { conversation_id: 1 } },
						{ fields: { outbox: 1 }, sparse: true },
						// The files service asks which files are still attached (fileRefs).
						{ fields: { attachments: 1 } },
					],
				},
			},
		}),
		PushMixin,
		PublisherMixin,
	],

	actions: {
		send: {
			rest: "POST /conversations/:conversationId/messages",
			socket: { namespace: "/chat", event: "message:send" },
			openapi: {
				operationId: "sendMessage",
				tag: "Messages",
				summary: "Send a message",
				description:
					"Every participant gets `message:created` on the `/chat` socket (except members of a group who blocked the sender). " +
					"A retry with the `clientId` of a send that went through answers the first message and sends nothing again. " +
					"In a pending message request only the initiator may send; in a declined one nobody may.",
				params: {
					conversationId: "The conversation's id. A conversation the caller is not a member of answers 404, like one that does not exist.",
					content: "Trimmed.",
					attachments: "A file uploaded to this server: its id, `/files/<id>`, or its full URL.",
					clientId:
						"The client's own id for this message. Sending again with a clientId this sender already used in this conversation returns the first message and notifies nobody again.",
				},
				responses: {
					...errors(401, 429, 503),
					...errors(400),
					404: ref("responses", "ConversationNotFound"),
					200: ok("The message (for a retry with a used `clientId`: the first one).", schema("Message")),
					403: errorResponse("`FORBIDDEN`: the caller may not send here now.", {
						pending: errorExample(403, "FORBIDDEN", "Accept the message request before replying"),
						declined: errorExample(403, "FORBIDDEN", "This message request was declined"),
						blocked: errorExample(403, "FORBIDDEN", "You cannot message this user"),
					}),
					...errors(413),
				},
			},
			params: {
				$$strict: "remove",
				conversationId: idRule,
				content: { type: "string", optional: true, max: MAX_CONTENT, default: "" },
				attachments: { type: "array", optional: true, max: 10, items: attachmentRule, default: [] },
				clientId: { type: "string", optional: true, min: 1, max: 100 },
			},
			async handler(this: MessagesThis, ctx: Ctx<{ conversationId: string; content: string; attachments: string[]; clientId?: string }>) {
				const me = userOf(ctx);
				const { conversationId, attachments, clientId } = ctx.params;
				const content = ctx.params.content.trim();
				if (!content && attachments.length === 0) {
					throw validationError("A message needs content or an attachment", [{ field: "content", type: "required", message: "Empty message" }]);
				}
				// A retry of a send that went through hits the unique dedupe_key in insertWithSeq:
				// it gets the first message back, and nothing is pushed again.
				const dedupeKey = clientId ? `${conversationId}:${me.id}:${clientId}` : `${conversationId}:${me.id}:auto:${crypto.randomUUID()}`;
				const { conversation, blockedBy, muted } = await callAction(ctx, "conversations.authorizeSend", { conversationId, senderId: me.id });
				// Attachments must be files of this server that the sender uploaded; the message's
				// type follows the first one.
				let files: { url: string; fileType: string }[] = [];
				if (attachments.length > 0) files = await callAction(ctx, "files.verifyAttachments", { refs: attachments, ownerId: me.id });
				const now = new Date();
				const { msg, created } = await this.insertWithSeq(conversationId, {
					conversation_id: conversationId,
					sender_id: me.id,
					type: files.length === 0 ? "text" : files[0].fileType === "image" ? "image" : "file",
					content,
					attachments: files.map(f => f.url),
					client_id: clientId ?? null,
					dedupe_key: dedupeKey,
					seen_by: [],
					delivered_to: [],
					edited_at: null,
					deleted: false,
					system_data: null,
					// The outbox flag: removed once message.created is safely on the event bus.
					outbox: true,
					created_at: now,
					updated_at: now,
				});
				const [presented] = await this.present(ctx, [msg]);
				// The conversation's head is moved on a retry too (the writes are no-ops when already
				// done), so a first attempt that died half-way is healed; nothing is pushed again.
				await this.record(ctx, msg);
				if (!created) return presented;
				countMetric(this.broker, "parley_messages_sent_total");
				const recipients = conversation.participants.filter(p => !blockedBy.includes(p));
				await this.push(ctx, [{ rooms: recipients.map(userRoom), event: "message:created", payload: presented }]);
				// Published after the message is stored, without holding up the sender's ack;
				// if it fails now, the outbox sweep publishes it later.
				const known = { type: conversation.type, name: conversation.name, status: conversation.status, participants: conversation.participants, blockedBy, muted };
				this.inBackground("message.created publish", () => this.announce(msg, presented.sender, known));
				return presented;
			},
		},

		edit: {
			socket: { namespace: "/chat", event: "message:edit" },
			openapi: {
				tag: "Messages",
				summary: "Edit one of the caller's own messages (its new `content`, trimmed); the participants get `message:updated`.",
				ack: schema("Message"),
			},
			params: { $$strict: "remove", messageId: idRule, content: { type: "string", min: 1, max: MAX_CONTENT } },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string; content: string }>) {
				const me = userOf(ctx);
				const { msg, conv } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				if (msg.sender_id !== me.id || msg.type === "system") throw forbidden("Only the sender edits a message");
				if (msg.deleted) throw appError("CONFLICT", "A deleted message cannot be edited");
				const content = ctx.params.content.trim();
				if (!content) throw validationError("Empty message", [{ field: "content", type: "required", message: "Empty message" }]);
				// An edit says something new: who may not send here now (a block in a private chat, a
				// declined request, a deleted other side) may not edit either.
				const { blockedBy } = await callAction(ctx, "conversations.authorizeSend", { conversationId: conv._id, senderId: me.id });
				const now = new Date();
				const updated = await this.withLock(`m:${msg._id}`, async () => {
					// Not over a deletion that got in first.
					await this.stores.messages.updateMany({ _id: msg._id, deleted: false }, { $set: { content, edited_at: now, updated_at: now } });
					const fresh = (await this.stores.messages.findById(msg._id)) as MessageDoc | null;
					if (!fresh || fresh.deleted) throw appError("CONFLICT", "A deleted message cannot be edited");
					return fresh;
				});
				const [presented] = await this.present(ctx, [updated]);
				await ctx.call("conversations.updateLastMessage", { conversationId: conv._id, lastMessage: lastMessageOf(updated) });
				// Who blocked the sender never got the message live, and is not told it changed.
				const rooms = conv.participants.filter(p => !blockedBy.includes(p)).map(userRoom);
				await this.push(ctx, [{ rooms, event: "message:updated", payload: presented }]);
				return presented;
			},
		},

		remove: {
			socket: { namespace: "/chat", event: "message:delete", ack: "none" },
			openapi: {
				tag: "Messages",
				summary:
					"Delete a message (its sender, or in a group the admin or a moderator): it stays as an empty tombstone with its `seq`, its attachments and notifications go, and the participants get `message:deleted`.",
			},
			params: { $$strict: "remove", messageId: idRule },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string }>) {
				const me = userOf(ctx);
				const { msg, conv } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				const groupManager = conv.type === "group" && (conv.admin_id === me.id || conv.moderator_ids.includes(me.id));
				if (!(msg.sender_id === me.id && msg.type !== "system") && !groupManager) throw forbidden("Only the sender, or a group admin or moderator, deletes a message");
				if (msg.deleted) return null;
				// Kept as a tombstone: its seq stays, so the sequence has no hole. Only the call that
				// actually deleted it (deleted: false then) tells anyone and lets the files go.
				const updated = await this.withLock(`m:${msg._id}`, async () => {
					const changed = await this.stores.messages.updateMany({ _id: msg._id, deleted: false }, { $set: { deleted: true, content: "", attachments: [], updated_at: new Date() } });
					return changed > 0 ? ((await this.stores.messages.findById(msg._id)) as MessageDoc | null) : null;
				});
				if (!updated) return null;
				await ctx.call("conversations.updateLastMessage", { conversationId: conv._id, lastMessage: lastMessageOf(updated) });
				// Who blocked the sender never got the message live, and is not told it went.
				const audience = await this.audience(ctx, conv._id, msg.sender_id, false);
				await this.push(ctx, [{ rooms: audience.map(userRoom), event: "message:deleted", payload: { messageId: msg._id, conversationId: conv._id } }]);
				this.releaseFiles(ctx, msg.attachments);
				// Its notifications quote it: they go too.
				this.inBackground("message.deleted publish", () => this.publishPatiently(CHANNELS.messageDeleted, { eventId: `deleted:${msg._id}`, messageId: msg._id }));
				return null;
			},
		},

		markRead: {
			socket: { namespace: "/chat", event: "message:read", ack: "none" },
			openapi: {
				tag: "Messages",
				summary:
					"Mark a message of another member read by the caller (the conversation is read up to its `seq`); the conversation's members get `message:read` and `message:status` (`read`).",
			},
			params: { $$strict: "remove", messageId: idRule },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string }>) {
				const me = userOf(ctx);
				const { msg, conv } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				if (msg.sender_id === me.id) return null;
				await ctx.call("conversations.advanceRead", { conversationId: conv._id, userId: me.id, seq: msg.seq });
				if (msg.seen_by.includes(me.id)) return null;
				await this.withLock(`m:${msg._id}`, () => this.stores.messages.updateById(msg._id, { $addToSet: { seen_by: me.id, delivered_to: me.id } }));
				const readAt = new Date().toISOString();
				// A receipt says the reader is here: not for anyone with a block with it either way.
				const rooms = (await this.audience(ctx, conv._id, me.id, true)).map(userRoom);
				await this.push(ctx, [
					{ rooms, event: "message:read", payload: { messageId: msg._id, conversationId: conv._id, userId: me.id, readAt } },
					{ rooms, event: "message:status", payload: { messageId: msg._id, userId: me.id, status: "read", timestamp: readAt } },
				]);
				return null;
			},
		},

		markDelivered: {
			socket: { namespace: "/chat", event: "message:delivered", ack: "none" },
			openapi: {
				tag: "Messages",
				summary: "Say that a message of another member reached the caller's device; the conversation's members get `message:status` (`delivered`).",
			},
			params: { $$strict: "remove", messageId: idRule },
			async handler(this: MessagesThis, ctx: Ctx<{ messageId: string }>) {
				const me = userOf(ctx);
				const { msg, conv } = await this.loadOwnMessage(ctx, ctx.params.messageId, me.id);
				if (msg.sender_id === me.id || msg.delivered_to.includes(me.id)) return null;
				await this.withLock(`m:${msg._id}`, () => this.stores.messages.updateById(msg._id, { $addToSet: { delivered_to: me.id } }));
				const rooms = (await this.audience(ctx, conv._id, me.id, true)).map(userRoom);
				await this.push(ctx, [{ rooms, event: "message:status", payload: { messageId: msg._id, userId: me.id, status: "delivered", timestamp: new Date().toISOString() } }]);
				return null;
			},
		},

		list: {
			rest: "GET /conversations/:conversationId/messages",
			socket: { namespace: "/chat", event: "message:list" },
			member: "conversationId",
			openapi: {
				operationId: "listMessages",
				tag: "Messages",
				summary: "A conversation's messages, a page at a time",
				description:
					"Paged by `seq`. Without a cursor: the newest messages, newest first. `before=41`: the page below seq 41, newest first. " +
					"`after=41`: what came after seq 41, oldest first (to catch up after a gap). Not both. " +
					"Messages before the caller cleared its history are not shown; deleted messages appear as tombstones.",
				params: {
					conversationId: "The conversation's id. A conversation the caller is not a member of answers 404, like one that does not exist.",
					limit: "At most this many messages.",
					before: "Messages with a smaller `seq`, newest first.",
					after: "Messages with a greater `seq`, oldest first. Not with `before`.",
				},
				responses: {
					...errors(401, 429, 503),
					...errors(400),
					404: ref("responses", "ConversationNotFound"),
					200: ok("One page of messages.", arrayOf(schema("Message"))),
				},
			},
			params: {
				$$strict: "remove",
				conversationId: idRule,
				limit: limitRule(50),
				before: { type: "number", integer: true, min: 1, convert: true, optional: true },
				after: { type: "number", integer: true, min: 0, convert: true, optional: true },
			},
			async handler(this: MessagesThis, ctx: Ctx<{ conversationId: string; limit: number; before?: number; after?: number }>) {
				const me = userOf(ctx);
				const { conversationId, limit, before, after } = ctx.params;
				if (before !== undefined && after !== undefined) throw validationError("Give before or after, not both", [{ field: "after", type: "forbidden", message: "Not with before" }]);
				const { membership } = memberOf(ctx);
				// History cleared by this member stays hidden from it.
				const floor = Math.max(membership.cleared_seq, after ?? 0);
				const seq: Record<string, number> = { $gt: floor };
				if (before !== undefined) seq.$lt = before;
				const msgs = (await this.stores.messages.find({ conversation_id: conversationId, seq }, { sort: [after !== undefined ? "seq" : "-seq"], limit })) as MessageDoc[];
				return this.hideReceiptsFor(ctx, await this.present(ctx, msgs), me.id);
			},
		},

		search: {
			rest: "GET /messages/search",
			socket: { namespace: "/chat", event: "message:search" },
			openapi: {
				operationId: "searchMessages",
				tag: "Messages",
				summary:
					"Search the text of the caller's messages (case-insensitive), in one conversation or in all of the caller's; answers the newest matches and how many there are in all.",
				params: { query: "The text to find (literal, case-insensitive).", conversationId: "Only in this conversation (404 if the caller is not a member)." },
				responses: {
					200: ok("The newest matches, and how many there are in all.", {
						type: "object",
						required: ["messages", "total"],
						properties: {
							messages: arrayOf(schema("Message")),
							total: { type: "integer", minimum: 0, description: "How many messages match in all." },
						},
					}),
					404: ref("responses", "ConversationNotFound"),
				},
			},
			params: {
				$$strict: "remove",
				query: { type: "string", trim: true, min: 1, max: 200 },
				conversationId: { ...idRule, optional: true },
				limit: limitRule(20),
			},
			async handler(this: MessagesThis, ctx: Ctx<{ query: string; conversationId?: string; limit: number }>) {
				const me = userOf(ctx);
				let scopes: { conversationId: string; clearedSeq: number }[];
				if (ctx.params.conversationId) {
					const { membership } = await this.access(ctx, ctx.params.conversationId, me.id);
					scopes = [{ conversationId: ctx.params.conversationId, clearedSeq: membership.cleared_seq }];
				} else {
					scopes = await callAction(ctx, "conversations.idsOf", { userId: me.id });
				}
				if (scopes.length === 0) return { messages: [], total: 0 };
				// The caller's conversations as one indexed $in at the top: NeDB uses an index only for
				// top-level fields, so a top-level $or of one clause per conversation would test the
				// regex against every message on the server.
				const query: Record<string, unknown> = {
					conversation_id: { $in: scopes.map(s => s.conversationId) },
					deleted: false,
					type: { $ne: "system" },
					content: { $regex: new RegExp(escapeRegex(ctx.params.query), "i") },
				};
				// History a member cleared stays hidden from it.
				const cleared = scopes.filter(s => s.clearedSeq > 0);
				if (cleared.length > 0) {
					query.$or = [{ conversation_id: { $nin: cleared.map(s => s.conversationId) } }, ...cleared.map(s => ({ conversation_id: s.conversationId, seq: { $gt: s.clearedSeq } }))];
				}
				const [msgs, total] = await Promise.all([
					this.stores.messages.find(query, { sort: ["-created_at"], limit: ctx.params.limit }) as Promise<MessageDoc[]>,
					this.stores.messages.count(query),
				]);
				return { messages: await this.hideReceiptsFor(ctx, await this.present(ctx, msgs), me.id), total };
			},
		},

		// ---- for the conversations service (not routed by the gateway) ----

		createSystem: {
			visibility: "public",
			params: { conversationId: idRule, event: "string", userId: { ...userIdRule, nullable: true, optional: true }, actorId: userIdRule },
			async handler(this: MessagesThis, ctx: Ctx<{ conversationId: string; event: string; userId?: number | null; actorId: number }>) {
				const { conversationId, event, actorId } = ctx.params;
				const userId = ctx.params.userId ?? null;
				const now = new Date();
				const { msg } = await this.insertWithSeq(conversationId, {
					conversation_id: conversationId,
					sender_id: actorId,
					type: "system",
					content: SYSTEM_TEXT[event] ?? event,
					attachments: [],
					client_id: null,
					dedupe_key: `${conversationId}:system:${crypto.randomUUID()}`,
					seen_by: [],
					delivered_to: [],
					edited_at: null,
					deleted: false,
					system_data: { event, userId, actorId },
					// No outbox flag: group changes notify through their own events.
					created_at: now,
					updated_at: now,
				});
				await this.record(ctx, msg);
				const participants = await callAction(ctx, "conversations.participantsOf", { conversationId });
				const [presented] = await this.present(ctx, [msg]);
				await this.push(ctx, [{ rooms: participants.map(userRoom), event: "message:created", payload: presented }]);
				return presented;
			},
		},

		/** A deleted group's messages go, and then the files attached to them (unless used elsewhere). */
		purgeConversation: {
			visibility: "public",
			params: { conversationId: idRule },
			async handler(this: MessagesThis, ctx: Ctx<{ conversationId: string }>) {
				const conversationId = ctx.params.conversationId;
				this.heads.delete(conversationId);
				// Only image and file messages carry attachments; read in pages, by seq.
				const attachments: string[] = [];
				for (let after = 0; ; ) {
					const page = (await this.stores.messages.find({ conversation_id: conversationId, type: { $in: ["image", "file"] }, deleted: false, seq: { $gt: after } }, { sort: ["seq"], limit: 500 })) as MessageDoc[];
					for (const m of page) attachments.push(...(m.attachments ?? []));
					if (page.length < 500) break;
					after = page[page.length - 1].seq;
				}
				const removed = await this.stores.messages.removeMany({ conversation_id: conversationId });
				this.releaseFiles(ctx, attachments);
				return removed;
			},
		},

		/** Which of these files are attached to a message not deleted (the files service asks before deleting one). */
		fileRefs: {
			visibility: "public",
			params: { fileIds: fileIdsRule },
			async handler(this: MessagesThis, ctx: Ctx<{ fileIds: string[] }>) {
				const wanted = new Set(ctx.params.fileIds);
				if (wanted.size === 0) return [];
				const rows = (await this.stores.messages.find({ attachments: { $in: [...wanted].map(filePath) }, deleted: false })) as MessageDoc[];
				const used = new Set<string>();
				for (const m of rows) for (const ref of m.attachments) {
					const id = fileIdOfPath(ref);
					if (id && wanted.has(id)) used.add(id);
				}
				return [...used];
			},
		},
	},

	events: {
		[EVENTS.userUpdated](this: MessagesThis, ctx: Context<BroadcastPayloads[typeof EVENTS.userUpdated]>) {
			this.profiles.delete(ctx.params.userId);
		},
		[EVENTS.userDeleted](this: MessagesThis, ctx: Context<BroadcastPayloads[typeof EVENTS.userDeleted]>) {
			this.profiles.delete(ctx.params.userId);
		},
	},

	methods: {
		async access(this: MessagesThis, ctx: Ctx<unknown>, conversationId: string, userId: number) {
			return callAction(ctx, "conversations.access", { conversationId, userId });
		},

		/** A message of a conversation the user belongs to; not found otherwise (nothing leaks). */
		async loadOwnMessage(this: MessagesThis, ctx: Ctx<unknown>, messageId: string, userId: number) {
			const msg = (await this.stores.messages.findById(messageId)) as MessageDoc | null;
			if (!msg) throw notFound("Message");
			// An outsider gets the same answer for a real message as for a made-up id.
			const { conv, membership } = await this.access(ctx, msg.conversation_id, userId).catch((err: { type?: string }) => {
				throw err?.type === "NOT_FOUND" ? notFound("Message") : err;
			});
			if (msg.seq <= membership.cleared_seq) throw notFound("Message");
			return { msg, conv };
		},

		/**
		 * Work on one key runs one at a time in this process: sends to one conversation (no seq is
		 * wasted by a local race), writes to one message (`m:<id>`, see the header).
		 */
		withLock<T>(this: MessagesThis, key: string, fn: () => Promise<T>): Promise<T> {
			return this.withLocks([key], fn);
		},

		/** fn after all work queued on these keys, and before any queued on them later. */
		withLocks<T>(this: MessagesThis, keys: string[], fn: () => Promise<T>): Promise<T> {
			return this.locks.run(keys, fn);
		},

		/** Who hears of userId's action (see conversations.audience). */
		async audience(this: MessagesThis, ctx: Ctx<unknown>, conversationId: string, userId: number, either: boolean) {
			return callAction(ctx, "conversations.audience", { conversationId, userId, either });
		},

		/** Receipts in history are receipts too: a reader with a block with the viewer, either way, is left out. */
		async hideReceiptsFor(this: MessagesThis, ctx: Ctx<unknown>, msgs: ReturnType<typeof presentMessage>[], viewerId: number) {
			const readers = [...new Set(msgs.flatMap(m => [...m.seen_by, ...m.delivered_to]))].filter(id => id !== viewerId);
			if (readers.length === 0) return msgs;
			const hidden = new Set<number>();
			for (let i = 0; i < readers.length; i += 1000) {
				const ids = await callAction(ctx, "conversations.blockRelations", { userId: viewerId, others: readers.slice(i, i + 1000) });
				for (const id of ids) hidden.add(id);
			}
			if (hidden.size === 0) return msgs;
			return msgs.map(m => ({ ...m, seen_by: m.seen_by.filter(id => !hidden.has(id)), delivered_to: m.delivered_to.filter(id => !hidden.has(id)) }));
		},

		/** Files no longer attached here; the files service deletes those nobody uses. Never fails the caller. */
		releaseFiles(this: MessagesThis, ctx: Ctx<unknown>, refs: string[]) {
			const fileIds = [...new Set(refs.map(fileIdOfPath).filter((id): id is string => !!id))];
			// files.release takes at most 1000 at once.
			for (let i = 0; i < fileIds.length; i += 1000) {
				const chunk = fileIds.slice(i, i + 1000);
				this.inBackground("files.release", () =>
					callAction(ctx, "files.release", { fileIds: chunk }).catch(err => this.logger.warn(`Could not release ${chunk.length} file(s)`, (err as Error).message)),
				);
			}
		},

		async maxSeq(this: MessagesThis, conversationId: string) {
			const [last] = (await this.stores.messages.find({ conversation_id: conversationId }, { sort: ["-seq"], limit: 1 })) as MessageDoc[];
			return last?.seq ?? 0;
		},

		async insertWithSeq(this: MessagesThis, conversationId: string, doc) {
			return this.withLock(conversationId, async () => {
				for (let attempt = 0; attempt < 25; attempt++) {
					const last = this.heads.get(conversationId) ?? (await this.maxSeq(conversationId));
					const seq = last + 1;
					try {
						const msg = (await this.stores.messages.insert({ ...doc, seq, seq_key: `${conversationId}:${seq}` })) as MessageDoc;
						if (this.heads.size >= MAX_CACHED_HEADS) this.heads.delete(this.heads.keys().next().value as string);
						this.heads.set(conversationId, seq);
						return { msg, created: true };
					} catch (err) {
						if (!isDuplicateKeyError(err)) throw err;
						// Either this clientId was stored meanwhile (a concurrent retry) ...
						const existing = (await this.stores.messages.findOne({ dedupe_key: doc.dedupe_key })) as MessageDoc | null;
						if (existing) return { msg: existing, created: false };
						// ... or another node took this seq: read the head again and take the next.
						this.heads.delete(conversationId);
					}
				}
				throw appError("SERVICE_UNAVAILABLE", "The conversation is too busy, try again");
			});
		},

		/** Sender names and avatars, cached for a minute (dropped when the user changes). */
		async senderProfiles(this: MessagesThis, caller: Caller, ids: number[]) {
			const out = new Map<number, SenderProfile>();
			const now = Date.now();
			const missing: number[] = [];
			for (const id of new Set(ids)) {
				const hit = this.profiles.get(id);
				if (hit && hit.until > now) out.set(id, hit.profile);
				else missing.push(id);
			}
			if (missing.length > 0) {
				try {
					const users = await callAction(caller, "users.resolve", { ids: missing });
					for (const u of users) {
						const profile = { id: u.id, name: u.username, avatar_url: u.avatar_url };
						this.profiles.set(u.id, { profile, until: now + PROFILE_TTL_MS });
						out.set(u.id, profile);
					}
				} catch (err) {
					// Names are decoration: a message still goes out while the users service is away.
					this.logger.warn("Sender profiles unavailable", (err as Error).message);
				}
			}
			return out;
		},

		async present(this: MessagesThis, ctx: Ctx<unknown>, msgs: MessageDoc[]) {
			const profiles = await this.senderProfiles(ctx, msgs.map(m => m.sender_id));
			return msgs.map(m => presentMessage(m, profiles.get(m.sender_id) ?? null));
		},

		/** The outbox backlog, the durable queues' depth and consumers, the dead letters: for the metrics. */
		async reportQueueMetrics(this: MessagesThis) {
			setMetric(this.broker, "parley_outbox_backlog", await this.stores.messages.count({ outbox: true }));
			const deadLetters = prefixed(DEAD_LETTER_QUEUE, this.broker.namespace);
			for (const q of await this.publisher.queueStats()) {
				if (q.queue === deadLetters) setMetric(this.broker, "parley_dead_letter_messages", q.messages);
				else {
					setMetric(this.broker, "parley_durable_queue_messages", q.messages, { queue: q.queue });
					setMetric(this.broker, "parley_durable_queue_consumers", q.consumers, { queue: q.queue });
				}
			}
		},

		/** message.created on the durable bus (one event per message), then the outbox flag. */
		async announce(this: MessagesThis, msg: MessageDoc, sender: SenderProfile, known?: KnownConversation) {
			// From a send: what authorizeSend said a moment ago. From the outbox sweep: asked now.
			const targets: NotificationTargets = known
				? notificationTargetsOf(known, msg.sender_id, known)
				: await callAction(this.broker, "conversations.notificationTargets", { conversationId: msg.conversation_id, senderId: msg.sender_id });
			if (targets) {
				await this.publishEvent(CHANNELS.messageCreated, {
					eventId: msg._id,
					conversationId: msg.conversation_id,
					conversationType: targets.conversationType,
					conversationName: targets.conversationName,
					senderId: msg.sender_id,
					senderName: sender.name,
					senderAvatar: sender.avatar_url,
					content: msg.content.slice(0, 200),
					messageType: msg.type,
					recipients: targets.recipients,
				});
			}
			this.markNotified(msg._id);
		},

		/** Outbox flags are set in batches: one write for many messages. */
		markNotified(this: MessagesThis, messageId: string) {
			this.notifiedBatch.add(messageId);
			if (this.notifiedTimer) return;
			this.notifiedTimer = setTimeout(() => this.inBackground("outbox flags", () => this.flushNotified()), 250);
		},

		async flushNotified(this: MessagesThis) {
			this.notifiedTimer = null;
			const ids = [...this.notifiedBatch];
			this.notifiedBatch.clear();
			// If this write is lost (the node dies), the sweep publishes again: harmless, events are idempotent.
			// Queued behind edits and deletions of these messages, never beside them (see the header).
			if (ids.length > 0) await this.withLocks(ids.map(id => `m:${id}`), () => this.stores.messages.updateMany({ _id: { $in: ids } }, { $unset: { outbox: true } }));
		},

		/** Messages whose event did not make it to the bus (it was down, the node died): publish again. */
		async sweepOutbox(this: MessagesThis) {
			const stale = new Date(Date.now() - 15_000);
			const pending = (await this.stores.messages.find({ outbox: true, created_at: { $lt: stale } }, { sort: ["created_at"], limit: 100 })) as MessageDoc[];
			if (pending.length === 0) return;
			const profiles = await this.senderProfiles(this.broker, pending.map(m => m.sender_id));
			for (const msg of pending) {
				// A duplicate event is harmless: the consumer keeps one notification per (event, user).
				await this.announce(msg, profiles.get(msg.sender_id) ?? { id: msg.sender_id, name: "", avatar_url: null });
			}
		},

		async record(this: MessagesThis, ctx: Ctx<unknown>, msg: MessageDoc) {
			await ctx.call("conversations.recordMessage", { conversationId: msg.conversation_id, seq: msg.seq, senderId: msg.sender_id, lastMessage: lastMessageOf(msg) });
		},
	},

	created(this: MessagesThis) {
		this.metricsTimer = null;
		this.heads = new Map();
		this.locks = new SerialWork();
		this.profiles = new Map();
		this.outboxTimer = null;
		this.notifiedBatch = new Set();
		this.notifiedTimer = null;
	},

	async started(this: MessagesThis) {
		// Messages stored before the outbox flag became a sparse field: their pending ones carry it now.
		await this.stores.messages.updateMany({ notified: false }, { $set: { outbox: true }, $unset: { notified: true } });
		this.outboxTimer = setInterval(() => {
			this.inBackground("outbox sweep", () => this.sweepOutbox());
		}, 10_000);
		this.outboxTimer.unref();
		if (this.broker.isMetricsEnabled()) {
			this.inBackground("queue metrics", () => this.reportQueueMetrics());
			this.metricsTimer = setInterval(() => this.inBackground("queue metrics", () => this.reportQueueMetrics()), METRICS_INTERVAL_MS);
			this.metricsTimer.unref();
		}
	},

	async stopped(this: MessagesThis) {
		if (this.outboxTimer) clearInterval(this.outboxTimer);
		if (this.metricsTimer) clearInterval(this.metricsTimer);
		if (this.notifiedTimer) clearTimeout(this.notifiedTimer);
		await this.flushNotified().catch(() => undefined);
	},
};

export default MessagesService;

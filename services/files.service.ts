/**
 * files: uploads, serving and deletion. The bytes go to a FileStorage (local disk under
 * DATA_DIR by default); the metadata (owner, size, type, checksum) to the document store.
 * A file's id is random and unguessable: it is the capability that lets `<img src>` fetch it
 * without a token. Nothing is kept from an upload that fails or is refused.
 *
 * Each user may keep at most FILE_QUOTA_BYTES. What a user uses is a ledger in `file_usage`:
 * one document per change, `version` 0, 1, 2 … per owner, made unique by `usage_key`. A change
 * reads the newest version and inserts the next one; a concurrent change (another upload, on
 * any node) that got there first makes that insert fail, and it is read and tried again. A
 * unique insert is the one step that is atomic on NeDB, MongoDB and FerretDB alike ($inc is
 * not: FerretDB 1.x reads and writes a document back, and loses concurrent increments).
 * Old versions are pruned as new ones arrive.
 *
 * A file is deleted by its uploader or an admin (DELETE /upload), or by `release` when the
 * last message, profile or group that used it lets go of it.
 */
import path from "node:path";
import { Readable } from "node:stream";
import type { Context, ServiceSchema, ServiceSettingSchema } from "moleculer";
import type { ActionResult } from "../lib/contracts";
import { config } from "../lib/config";
import { appError, badRequest, forbidden, notFound, validationError } from "../lib/errors";
import { type FileStorage, LocalDiskStorage } from "../lib/file-storage";
import { FILE_ID_PATTERN, FILE_PATH_PATTERN, FILE_REF_PATTERN, newFileId } from "../lib/file-ids";
import { SNIFF_BYTES, cleanFileName, detectType, storedFileName } from "../lib/file-types";
import { SerialWork } from "../lib/serial-work";
import type { CallMeta } from "../lib/meta";
import {
	BASE64_UPLOAD_ERRORS,
	BASE64_UPLOAD_PARAMS,
	body,
	errorExample,
	errorResponse,
	errors,
	FILE_BYTES,
	FILE_HEADERS,
	FILE_LIMIT_TEXT,
	FILE_LOCATION,
	headers,
	noContent,
	ok,
	RANGE_HEADER,
	ref,
	schema,
} from "../lib/api-schemas";
import { userOf } from "../middlewares/authorize.middleware";
import { createDocsMixin, type Doc, type DocsMixinThis, isDuplicateKeyError } from "../mixins/docs.mixin";

type Ctx<P = Record<string, never>> = Context<P, CallMeta & { filename?: string; mimetype?: string; range?: string }>;


/**
 * Every file counts at least this much against the quota (a disk block and its metadata), so
 * a quota also bounds how many files one user can make: a flood of 1-byte uploads stops at
 * FILE_QUOTA_BYTES / 4 KiB files, not at the disk's inodes.
 */
export const MIN_CHARGE_BYTES = 4096;
export const chargeOf = (size: number) => Math.max(size, MIN_CHARGE_BYTES);

/** Services that may still use a file, asked by `release` before it deletes one. */
const FILE_REFERRERS = ["messages.fileRefs", "users.fileRefs", "conversations.fileRefs"] as const;

/** Ledger versions kept behind the newest, and for how long at least (see changeUsage). */
const USAGE_KEEP_VERSIONS = 32;
const USAGE_KEEP_MS = 10 * 60_000;
const USAGE_ATTEMPTS = 50;

interface FileDoc extends Doc {
	file_id: string;
	owner_id: number;
	file_name: string;
	mimetype: string;
	file_type: "image" | "video" | "audio" | "document";
	size: number;
	checksum: string;
	created_at: Date;
}

interface UsageDoc extends Doc {
	owner_id: number;
	version: number;
	used: number;
	usage_key: string;
	created_at: Date;
}

interface FilesThis extends DocsMixinThis<"files" | "file_usage"> {
	storage: FileStorage;
	usageLocks: SerialWork<number>;
	store(ctx: Ctx<unknown>, source: Readable, fileName: string, onlyImages: boolean, knownSize?: number): Promise<ReturnType<typeof presentFile>>;
	byId(fileId: string): Promise<FileDoc | null>;
	fileIdOf(ref: string): string | null;
	usageOf(ownerId: number): Promise<UsageDoc>;
	changeUsage(ownerId: number, delta: number, quota?: number): Promise<{ ok: boolean; used: number }>;
	withUsageLock<T>(ownerId: number, fn: () => Promise<T>): Promise<T>;
	deleteFiles(files: FileDoc[]): Promise<string[]>;
}

export function presentFile(f: FileDoc) {
	return { fileId: f.file_id, url: `/files/${f.file_id}`, fileType: f.file_type, fileName: f.file_name, size: f.size, mimetype: f.mimetype };
}

/** 1536 → "1.5 KiB", for messages people read. */
export function formatBytes(n: number): string {
	const units = ["B", "KiB", "MiB", "GiB", "TiB"];
	let value = n;
	let unit = 0;
	while (value >= 1024 && unit < units.length - 1) {
		value /= 1024;
		unit++;
	}
	return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function quotaExceeded(quota: number, used: number) {
	return appError("PAYLOAD_TOO_LARGE", `Storage quota exceeded: ${formatBytes(Math.min(used, quota))} of ${formatBytes(quota)} used; delete files to upload more`, {
		quota,
		used,
	});
}

/** A Range header's one range, resolved against the file's size; null when it is not one we honour. */
function parseRange(header: string | undefined, size: number): { start: number; end: number } | "unsatisfiable" | null {
	// One range only; a multi-range or malformed header is ignored and the whole file is sent (RFC 9110 14.2).
	const match = /^bytes=(\d*)-(\d*)$/.exec(header ?? "");
	if (!match || size === 0 || (match[1] === "" && match[2] === "")) return null;
	if (match[1] === "") {
		const suffix = Number(match[2]);
		if (suffix === 0) return "unsatisfiable";
		return { start: Math.max(0, size - suffix), end: size - 1 };
	}
	const start = Number(match[1]);
	if (match[2] !== "" && Number(match[2]) < start) return null;
	if (start >= size) return "unsatisfiable";
	return { start, end: match[2] === "" ? size - 1 : Math.min(Number(match[2]), size - 1) };
}

/** The first `n` bytes of a stream, and a stream that yields everything (those bytes included). */
async function peek(source: Readable, n: number): Promise<{ head: Buffer; whole: Readable }> {
	const iterator = source[Symbol.asyncIterator]();
	const chunks: Buffer[] = [];
	let length = 0;
	let done = false;
	while (length < n) {
		const next = await iterator.next();
		if (next.done) {
			done = true;
			break;
		}
		const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value);
		chunks.push(chunk);
		length += chunk.length;
	}
	const head = Buffer.concat(chunks);
	async function* all() {
		yield head;
		if (done) return;
		for (;;) {
			const next = await iterator.next();
			if (next.done) return;
			yield next.value as Buffer;
		}
	}
	return { head: head.subarray(0, n), whole: Readable.from(all(), { objectMode: false }) };
}

const avatarError = (message: string) => validationError(message, [{ field: "avatar", type: "file", message }]);

const FilesService: ServiceSchema<ServiceSettingSchema, FilesThis> = {
	name: "files",
	mixins: [
		createDocsMixin<"files" | "file_usage">({
			collections: {
				files: {
					definition: { file_id: String, owner_id: Number, file_name: String, mimetype: String, file_type: String, size: Number, checksum: String, created_at: Date },
					indexes: [{ fields: { file_id: 1 }, unique: true }, { fields: { owner_id: 1 } }],
				},
				file_usage: {
					definition: { owner_id: Number, version: Number, used: Number, usage_key: String, created_at: Date },
					indexes: [{ fields: { usage_key: 1 }, unique: true }, { fields: { owner_id: 1, version: -1 } }, { fields: { owner_id: 1 } }],
				},
			},
		}),
	],

	actions: {
		/** One file as a stream (from the gateway's multipart upload); meta.filename is the client's name. Not routed. */
		save: {
			visibility: "public",
			auth: true,
			// A caller's default timeout (seconds) would cut off a large file on a slow line, and the
			// file would be stored after the caller gave up. A client that stalls is ended by the
			// gateway's HTTP request timeout, which ends this stream too.
			timeout: 30 * 60_000,
			async handler(this: FilesThis, ctx: Ctx<Readable>) {
				if (!(ctx.params instanceof Readable) && typeof (ctx.params as { on?: unknown })?.on !== "function") throw badRequest("No file stream");
				return this.store(ctx, ctx.params as Readable, cleanFileName(ctx.meta.filename), false);
			},
		},

		saveBase64: {
			rest: "POST /upload/file-base64",
			gatewayRoute: "large-body",
			openapi: {
				operationId: "uploadFileBase64",
				tag: "Files",
				summary: "Upload one file as base64 (JSON)",
				description:
					"For clients that cannot send multipart. `base64` may be a `data:` URL; `mimeType` is not trusted (the type is decided from the decoded bytes, as for POST /upload/single). " +
					`The decoded file may be at most ${FILE_LIMIT_TEXT}; the JSON body up to 35 MiB. A refused upload keeps nothing.`,
				params: BASE64_UPLOAD_PARAMS,
				// `onlyImages` is for users.uploadAvatar, not for clients: the body is the old one without it.
				requestBody: body(schema("Base64UploadRequest")),
				responses: {
					...errors(401, 429, 503),
					201: ok("Stored; `Location` is the file's `url`.", schema("File"), FILE_LOCATION),
					...BASE64_UPLOAD_ERRORS,
					...errors(415),
				},
			},
			params: {
				$$strict: "remove",
				fileName: { type: "string", min: 1, max: 500 },
				mimeType: { type: "string", optional: true, max: 200 },
				// Its size is checked before decoding (413); the gateway's 35 MiB body limit bounds the string.
				base64: { type: "string", min: 1 },
				onlyImages: { type: "boolean", optional: true, default: false },
			},
			async handler(this: FilesThis, ctx: Ctx<{ fileName: string; mimeType?: string; base64: string; onlyImages: boolean }>): Promise<ActionResult<"files.saveBase64">> {
				// A data: URL prefix is accepted; anything that is not base64 is refused.
				const raw = ctx.params.base64.replace(/^data:[^,]{0,200};base64,/, "").replace(/\s+/g, "");
				if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(raw) || raw.length === 0) {
					throw validationError("base64 is not valid base64", [{ field: "base64", type: "base64", message: "Not base64" }]);
				}
				// Known from the length alone: an oversized file is refused before it is decoded.
				const size = Math.floor((raw.replace(/=+$/, "").length * 3) / 4);
				if (size > config.fileMaxBytes) throw appError("PAYLOAD_TOO_LARGE", `A file may be at most ${config.fileMaxBytes} bytes`);
				const bytes = Buffer.from(raw, "base64");
				const file = await this.store(ctx, Readable.from([bytes]), cleanFileName(ctx.params.fileName), ctx.params.onlyImages, bytes.length);
				ctx.meta.$statusCode = 201;
				ctx.meta.$location = file.url;
				return file;
			},
		},

		download: {
			rest: "GET /files/:fileId",
			gatewayRoute: "files",
			// No token: the unguessable file id is the capability, so <img src> works.
			auth: false,
			openapi: {
				operationId: "downloadFile",
				tag: "Files",
				summary: "A file's bytes (no token)",
				description:
					"Needs no token, so `<img src>`, `<video src>` and links work: the unguessable id is the capability (share a file's `url` only with whom may read it). " +
					"Answers the bytes with the stored `mimetype` as `Content-Type`; images, video and audio are `inline`, everything else an `attachment`. " +
					"One byte range may be asked with `Range` (206); a range that starts past the end is 416. Not rate-limited.",
				params: { fileId: "The file's id, as in its `url`. Anything that is not 32 lower-case hex characters answers 404, like an unknown id." },
				parameters: [RANGE_HEADER],
				responses: {
					200: { description: "The whole file, with the stored `mimetype` as `Content-Type`.", headers: headers(FILE_HEADERS), content: FILE_BYTES },
					206: {
						description: "The asked range of the file (a `Range` request).",
						headers: headers({
							...FILE_HEADERS,
							"Content-Range": { description: "`bytes <first>-<last>/<size>`.", schema: { type: "string", example: "bytes 0-1023/48213" } },
						}),
						content: FILE_BYTES,
					},
					400: errorResponse("`VALIDATION_ERROR`: `fileId` is longer than 64 characters.", {
						tooLong: errorExample(400, "VALIDATION_ERROR", "Parameters validation error", [
							{ field: "fileId", type: "stringMax", message: "The 'fileId' field length must be less than or equal to 64 characters long.", expected: 64 },
						]),
					}),
					404: ref("responses", "FileNotFound"),
					416: {
						description: "The range cannot be satisfied (it starts past the end of the file). No body.",
						headers: headers({ "Content-Range": { description: "`bytes */<size>`: the file's size.", schema: { type: "string", example: "bytes */48213" } } }),
					},
					...errors(503),
				},
			},
			params: { $$strict: "remove", fileId: { type: "string", max: 64 } },
			async handler(this: FilesThis, ctx: Ctx<{ fileId: string }>) {
				const file = FILE_ID_PATTERN.test(ctx.params.fileId) ? await this.byId(ctx.params.fileId) : null;
				if (!file || !(await this.storage.exists(file.file_id))) throw notFound("File");
				const inline = file.file_type !== "document";
				// Text was checked to be UTF-8: say so, so no browser guesses another charset.
				const contentType = file.mimetype.startsWith("text/") ? `${file.mimetype}; charset=utf-8` : file.mimetype;
				// RFC 5987 value: encodeURIComponent leaves ' ( ) * as they are, which end or break it.
				const encodedName = encodeURIComponent(file.file_name).replace(/['()*]/g, c => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
				const headers: Record<string, string> = {
					"Content-Type": contentType,
					"X-Content-Type-Options": "nosniff",
					"Content-Disposition": `${inline ? "inline" : "attachment"}; filename="${file.file_name.replace(/[^\x20-\x7e]|["\\]/g, "_")}"; filename*=UTF-8''${encodedName}`,
					"Accept-Ranges": "bytes",
					"Cache-Control": "private, max-age=31536000, immutable",
					// Even if a browser were tricked into rendering it, it could run nothing.
					"Content-Security-Policy": "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox",
				};
				const range = parseRange(ctx.meta.range, file.size);
				if (range === "unsatisfiable") {
					ctx.meta.$statusCode = 416;
					ctx.meta.$responseHeaders = { ...headers, "Content-Range": `bytes */${file.size}` };
					return null;
				}
				if (range) {
					ctx.meta.$statusCode = 206;
					ctx.meta.$responseType = contentType;
					ctx.meta.$responseHeaders = { ...headers, "Content-Range": `bytes ${range.start}-${range.end}/${file.size}`, "Content-Length": String(range.end - range.start + 1) };
					return this.storage.read(file.file_id, range);
				}
				ctx.meta.$responseType = contentType;
				ctx.meta.$responseHeaders = { ...headers, "Content-Length": String(file.size) };
				return this.storage.read(file.file_id);
			},
		},

		remove: {
			rest: "DELETE /upload",
			openapi: {
				operationId: "deleteFile",
				tag: "Files",
				summary: "Delete an uploaded file (its uploader or an admin)",
				description:
					"Only the user who uploaded the file, or an admin, may delete it. It stops being served at once (GET /files/{fileId} answers 404); " +
					"messages and avatars that point to it keep the dead link.",
				params: {
					fileId: "The file's id.",
					fileUrl: "The file's `url` (`/files/<fileId>`) or a full URL of it on this server (`https://host/files/<fileId>`, a query or fragment allowed).",
				},
				// One of fileId and fileUrl is required (anyOf), which params cannot say: the old body.
				requestBody: body(schema("DeleteFileRequest")),
				responses: {
					...errors(401, 429, 503),
					204: noContent("Deleted."),
					400: errorResponse("`VALIDATION_ERROR`: neither `fileId` nor `fileUrl` is given, or one is too long.", {
						missing: errorExample(400, "VALIDATION_ERROR", "Give fileId or fileUrl", [{ field: "fileId", type: "required", message: "fileId or fileUrl" }]),
					}),
					403: errorResponse("`FORBIDDEN`: the caller is neither the file's uploader nor an admin.", {
						notOwner: errorExample(403, "FORBIDDEN", "Only the uploader or an admin deletes a file"),
					}),
					404: errorResponse("`NOT_FOUND`: no such file, or `fileId` / `fileUrl` does not name a file of this server.", {
						notFound: errorExample(404, "NOT_FOUND", "File not found"),
					}),
					...errors(413),
				},
			},
			params: { $$strict: "remove", fileId: { type: "string", optional: true, max: 64 }, fileUrl: { type: "string", optional: true, max: 2048 } },
			async handler(this: FilesThis, ctx: Ctx<{ fileId?: string; fileUrl?: string }>) {
				const me = userOf(ctx);
				const ref = ctx.params.fileId ?? ctx.params.fileUrl;
				if (!ref) throw validationError("Give fileId or fileUrl", [{ field: "fileId", type: "required", message: "fileId or fileUrl" }]);
				const fileId = this.fileIdOf(ref);
				const file = fileId ? await this.byId(fileId) : null;
				if (!file) throw notFound("File");
				if (file.owner_id !== me.id && !(await ctx.call("users.isAdmin", { userId: me.id }))) throw forbidden("Only the uploader or an admin deletes a file");
				if ((await this.deleteFiles([file])).length === 0) throw notFound("File");
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		/** Undo uploads of a request that failed as a whole (not routed by the gateway). */
		discard: {
			visibility: "public",
			auth: true,
			params: { fileIds: { type: "array", items: { type: "string", max: 64 }, max: 20 } },
			async handler(this: FilesThis, ctx: Ctx<{ fileIds: string[] }>) {
				const me = userOf(ctx);
				const ids = ctx.params.fileIds.filter(id => FILE_ID_PATTERN.test(id));
				const files = ids.length > 0 ? ((await this.stores.files.find({ file_id: { $in: ids }, owner_id: me.id })) as FileDoc[]) : [];
				await this.deleteFiles(files);
				return true;
			},
		},

		/**
		 * Files something stopped using (a deleted message's attachments, a replaced or deleted
		 * avatar, a deleted group's picture): each is deleted unless a message, a profile or a
		 * group still uses it. When a referencing service cannot say, everything is kept: a file
		 * left over costs its owner quota, a file deleted while in use breaks a conversation.
		 * Not routed. Answers the ids deleted.
		 */
		release: {
			visibility: "public",
			params: { fileIds: { type: "array", items: { type: "string", max: 2048 }, max: 1000 } },
			async handler(this: FilesThis, ctx: Ctx<{ fileIds: string[] }>): Promise<ActionResult<"files.release">> {
				// Ids or /files/<id> paths; anything else (an external avatar URL) is nothing of ours.
				const ids = [...new Set(ctx.params.fileIds.map(ref => this.fileIdOf(ref)).filter((id): id is string => !!id))];
				if (ids.length === 0) return [];
				let inUse: Set<string>;
				try {
					const answers = await Promise.all(FILE_REFERRERS.map(action => ctx.call<unknown, { fileIds: string[] }>(action, { fileIds: ids })));
					inUse = new Set();
					for (const [i, answer] of answers.entries()) {
						if (!Array.isArray(answer)) throw new Error(`${FILE_REFERRERS[i]} did not answer a list`);
						for (const ref of answer) if (typeof ref === "string") inUse.add(this.fileIdOf(ref) ?? ref);
					}
				} catch (err) {
					this.logger.warn(`Keeping ${ids.length} released file(s): could not ask who uses them`, (err as Error).message);
					return [];
				}
				const unused = ids.filter(id => !inUse.has(id));
				const files = unused.length > 0 ? ((await this.stores.files.find({ file_id: { $in: unused } })) as FileDoc[]) : [];
				return this.deleteFiles(files);
			},
		},

		/** Attachments of a message: files of this server, uploaded by the sender (not routed). */
		verifyAttachments: {
			visibility: "public",
			params: { refs: { type: "array", items: { type: "string", max: 2048 }, max: 10 }, ownerId: { type: "number", integer: true, positive: true } },
			async handler(this: FilesThis, ctx: Ctx<{ refs: string[]; ownerId: number }>): Promise<ActionResult<"files.verifyAttachments">> {
				const out = [];
				for (const ref of ctx.params.refs) {
					const fileId = this.fileIdOf(ref);
					const file = fileId ? await this.byId(fileId) : null;
					if (!file) throw validationError("An attachment is not a file of this server", [{ field: "attachments", type: "file", message: `Unknown file ${ref.slice(0, 100)}` }]);
					if (file.owner_id !== ctx.params.ownerId) throw forbidden("Attach only files you uploaded");
					out.push(presentFile(file));
				}
				return out;
			},
		},

		/**
		 * A profile or group picture: exactly `/files/<id>` (what uploads answer as `url`), an image,
		 * uploaded by ownerId. Only that one form is accepted, not a bare id or a full URL: what is
		 * stored is what `<img src>` loads, and the services that answer fileRefs find a picture
		 * by that exact string. Not routed.
		 */
		verifyImage: {
			visibility: "public",
			params: { ref: { type: "string", max: 2048 }, ownerId: { type: "number", integer: true, positive: true } },
			async handler(this: FilesThis, ctx: Ctx<{ ref: string; ownerId: number }>) {
				const match = FILE_PATH_PATTERN.exec(ctx.params.ref);
				if (!match) throw avatarError("A picture must be an image uploaded to this server: /files/<id>");
				const file = await this.byId(match[1]);
				if (!file) throw avatarError("This picture is not a file of this server");
				if (file.owner_id !== ctx.params.ownerId) throw forbidden("Use an image you uploaded");
				if (file.file_type !== "image") throw avatarError("A picture must be an image (PNG, JPEG, GIF or WebP)");
				return presentFile(file);
			},
		},
	},

	methods: {
		async byId(this: FilesThis, fileId: string) {
			return (await this.stores.files.findOne({ file_id: fileId })) as FileDoc | null;
		},

		/** A file id from an id, a /files/<id> path, or a URL of this server's files. */
		fileIdOf(ref: string) {
			const match = FILE_REF_PATTERN.exec(ref.trim());
			return match ? match[1] : null;
		},

		async store(this: FilesThis, ctx: Ctx<unknown>, source: Readable, fileName: string, onlyImages: boolean, knownSize?: number) {
			// Past this the caller has stopped waiting: what arrives then is not kept, nobody would know of it.
			const deadline = Number(ctx.options?.timeout) > 0 ? Date.now() + Number(ctx.options.timeout) : Infinity;
			let fileId: string | null = null;
			let charged = 0;
			let ownerId = 0;
			try {
				ownerId = userOf(ctx).id;
				const quota = config.fileQuotaBytes;
				// Refused before a byte is read when it cannot fit.
				const before = await this.usageOf(ownerId);
				const remaining = quota - before.used;
				if (chargeOf(knownSize ?? 1) > remaining) throw quotaExceeded(quota, before.used);
				const { head, whole } = await peek(source, SNIFF_BYTES);
				if (head.length === 0) throw validationError("The file is empty", [{ field: "file", type: "required", message: "Empty file" }]);
				const type = detectType(head, fileName);
				if (!type || (onlyImages && type.kind !== "image")) {
					throw appError("UNSUPPORTED_MEDIA_TYPE", onlyImages ? "Only images are accepted here" : "This type of file is not accepted");
				}
				// The stored name is ours: random, never derived from the client's name.
				fileId = newFileId();
				// A stream is cut off where it stops fitting in what is left of the quota.
				const limit = Math.min(config.fileMaxBytes, remaining);
				let written: { size: number; sha256: string };
				try {
					written = await this.storage.write(fileId, whole, limit);
				} catch (err) {
					if ((err as { type?: string }).type === "PAYLOAD_TOO_LARGE" && limit < config.fileMaxBytes) throw quotaExceeded(quota, (await this.usageOf(ownerId)).used);
					throw err;
				}
				if (Date.now() > deadline) throw appError("SERVICE_UNAVAILABLE", "The upload took too long", { retryAfter: 1 });
				// Counted before the metadata exists: uploads racing for the last bytes of a quota
				// cannot both get them, and a crash here over-counts rather than under-counts.
				const charge = await this.changeUsage(ownerId, chargeOf(written.size), quota);
				if (!charge.ok) throw quotaExceeded(quota, charge.used);
				charged = chargeOf(written.size);
				const doc = (await this.stores.files.insert({
					file_id: fileId,
					owner_id: ownerId,
					file_name: storedFileName(fileName, type),
					mimetype: type.mime,
					file_type: type.kind,
					size: written.size,
					checksum: written.sha256,
					created_at: new Date(),
				})) as FileDoc;
				return presentFile(doc);
			} catch (err) {
				// Drain what the client still sends, and keep nothing of this upload.
				source.resume();
				if (fileId) await this.storage.remove(fileId).catch(() => undefined);
				if (charged > 0) {
					await this.changeUsage(ownerId, -charged).catch(e => this.logger.warn(`Quota of user ${ownerId} not given back after a failed upload`, (e as Error).message));
				}
				throw err;
			}
		},

		/**
		 * Each file: metadata first (once it is gone the file cannot be served), then the bytes;
		 * then the quota, once per owner. Answers the ids this call deleted.
		 */
		async deleteFiles(this: FilesThis, files: FileDoc[]) {
			const freed = new Map<number, number>();
			const deleted: string[] = [];
			// Each owner's ledger must exist before a file goes: started afterwards from the
			// remaining files, it would already leave the file out, and the refund would count it twice.
			for (const owner of new Set(files.map(f => f.owner_id))) await this.usageOf(owner);
			for (const file of files) {
				// 0 when a concurrent delete got there first: that one gives the bytes and the quota back.
				if ((await this.stores.files.removeMany({ file_id: file.file_id })) === 0) continue;
				deleted.push(file.file_id);
				freed.set(file.owner_id, (freed.get(file.owner_id) ?? 0) + chargeOf(file.size));
				await this.storage.remove(file.file_id).catch(err => this.logger.warn(`Bytes of deleted file ${file.file_id} left behind`, (err as Error).message));
			}
			for (const [owner, bytes] of freed) {
				await this.changeUsage(owner, -bytes).catch(err => this.logger.warn(`Quota of user ${owner} not given back (${bytes} bytes)`, (err as Error).message));
			}
			return deleted;
		},

		/** The newest ledger entry of an owner; the first time, started from the files the owner already has. */
		async usageOf(this: FilesThis, ownerId: number) {
			for (let attempt = 0; attempt < USAGE_ATTEMPTS; attempt++) {
				const [latest] = (await this.stores.file_usage.find({ owner_id: ownerId }, { sort: ["-version"], limit: 1 })) as UsageDoc[];
				if (latest) return latest;
				const files = (await this.stores.files.find({ owner_id: ownerId })) as FileDoc[];
				const used = files.reduce((sum, f) => sum + chargeOf(f.size), 0);
				try {
					return (await this.stores.file_usage.insert({ owner_id: ownerId, version: 0, used, usage_key: `${ownerId}:0`, created_at: new Date() })) as UsageDoc;
				} catch (err) {
					// Another upload started it first: read that one.
					if (!isDuplicateKeyError(err)) throw err;
				}
			}
			throw appError("SERVICE_UNAVAILABLE", "Storage is busy, try again", { retryAfter: 1 });
		},

		/**
		 * Add `delta` bytes to what an owner uses; with a quota, only if the result fits it.
		 * Answers whether it was applied and what was used then.
		 */
		async changeUsage(this: FilesThis, ownerId: number, delta: number, quota?: number) {
			return this.withUsageLock(ownerId, async () => {
				for (let attempt = 0; attempt < USAGE_ATTEMPTS; attempt++) {
					const current = await this.usageOf(ownerId);
					const used = Math.max(0, current.used + delta);
					if (quota !== undefined && delta > 0 && used > quota) return { ok: false, used: current.used };
					const version = current.version + 1;
					try {
						await this.stores.file_usage.insert({ owner_id: ownerId, version, used, usage_key: `${ownerId}:${version}`, created_at: new Date() });
					} catch (err) {
						if (!isDuplicateKeyError(err)) throw err;
						// Another node changed it first: read again, after a moment that breaks lockstep.
						await new Promise(resolve => setTimeout(resolve, Math.random() * 5 * Math.min(attempt + 1, 10)));
						continue;
					}
					// A deleted version could be inserted again by a change that read it long ago and
					// stalled since; versions are kept for a while, and a few of them, so none is.
					if (version % 16 === 0) {
						await this.stores.file_usage
							.removeMany({ owner_id: ownerId, version: { $lt: version - USAGE_KEEP_VERSIONS }, created_at: { $lt: new Date(Date.now() - USAGE_KEEP_MS) } })
							.catch(() => undefined);
					}
					return { ok: true, used };
				}
				throw appError("SERVICE_UNAVAILABLE", "Storage is busy, try again", { retryAfter: 1 });
			});
		},

		/** Changes of one owner's usage run one at a time in this process: no retries among local uploads. */
		withUsageLock<T>(this: FilesThis, ownerId: number, fn: () => Promise<T>): Promise<T> {
			return this.usageLocks.run(ownerId, fn);
		},
	},

	created(this: FilesThis) {
		this.storage = new LocalDiskStorage(path.join(config.dataDir, "files"));
		this.usageLocks = new SerialWork<number>();
	},

	started(this: FilesThis) {
		// Longer than any upload may take (save's timeout), so no live upload loses its file.
		const storage = this.storage;
		if (storage instanceof LocalDiskStorage) {
			storage.removeStalePartials(60 * 60_000).then(
				n => n > 0 && this.logger.info(`Removed ${n} half-written upload(s) left by a stopped node`),
				err => this.logger.warn("Could not look for half-written uploads", (err as Error).message),
			);
		}
	},
};

export default FilesService;

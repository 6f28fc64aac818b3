/**
 * files: uploads, serving and deletion. The bytes go to a FileStorage (local disk under
 * DATA_DIR by default); the metadata (owner, size, type, checksum) to the document store.
 * A file's id is random and unguessable: it is the capability that lets `<img src>` fetch it
 * without a token. Nothing is kept from an upload that fails or is refused.
 */
import crypto from "node:crypto";
import path from "node:path";
import { Readable } from "node:stream";
import type { Context, ServiceSchema, ServiceSettingSchema } from "moleculer";
import { config } from "../lib/config";
import { appError, badRequest, forbidden, notFound, validationError } from "../lib/errors";
import { type FileStorage, LocalDiskStorage } from "../lib/file-storage";
import { SNIFF_BYTES, cleanFileName, detectType } from "../lib/file-types";
import { callerOf } from "../lib/caller";
import type { CallMeta } from "../lib/meta";
import { createDocsMixin, type Doc, type DocsMixinThis } from "../mixins/docs.mixin";

type Ctx<P = Record<string, never>> = Context<P, CallMeta & { filename?: string; mimetype?: string; range?: string }>;

export const FILE_ID_PATTERN = /^[a-f0-9]{32}$/;

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

interface FilesThis extends DocsMixinThis<"files"> {
	storage: FileStorage;
	store(ctx: Ctx<unknown>, source: Readable, fileName: string, onlyImages: boolean): Promise<ReturnType<typeof presentFile>>;
	byId(fileId: string): Promise<FileDoc | null>;
	fileIdOf(ref: string): string | null;
}

export function presentFile(f: FileDoc) {
	return { fileId: f.file_id, url: `/files/${f.file_id}`, fileType: f.file_type, fileName: f.file_name, size: f.size, mimetype: f.mimetype };
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

const FilesService: ServiceSchema<ServiceSettingSchema, FilesThis> = {
	name: "files",
	mixins: [
		createDocsMixin<"files">({
			collections: {
				files: {
					definition: { file_id: String, owner_id: Number, file_name: String, mimetype: String, file_type: String, size: Number, checksum: String, created_at: Date },
					indexes: [{ fields: { file_id: 1 }, unique: true }, { fields: { owner_id: 1 } }],
				},
			},
		}),
	],

	actions: {
		/** One file as a stream (from the gateway's multipart upload); meta.filename is the client's name. */
		save: {
			async handler(this: FilesThis, ctx: Ctx<Readable>) {
				if (!(ctx.params instanceof Readable) && typeof (ctx.params as { on?: unknown })?.on !== "function") throw badRequest("No file stream");
				return this.store(ctx, ctx.params as Readable, cleanFileName(ctx.meta.filename), false);
			},
		},

		saveBase64: {
			params: {
				$$strict: "remove",
				fileName: { type: "string", min: 1, max: 500 },
				mimeType: { type: "string", optional: true, max: 200 },
				// Its size is checked after decoding (413); the gateway's 35 MiB body limit bounds the string.
				base64: { type: "string", min: 1 },
				onlyImages: { type: "boolean", optional: true, default: false },
			},
			async handler(this: FilesThis, ctx: Ctx<{ fileName: string; mimeType?: string; base64: string; onlyImages: boolean }>) {
				// A data: URL prefix is accepted; anything that is not base64 is refused.
				const raw = ctx.params.base64.replace(/^data:[^,]*;base64,/, "").replace(/\s+/g, "");
				if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(raw) || raw.length === 0) {
					throw validationError("base64 is not valid base64", [{ field: "base64", type: "base64", message: "Not base64" }]);
				}
				const bytes = Buffer.from(raw, "base64");
				if (bytes.length > config.fileMaxBytes) throw appError("PAYLOAD_TOO_LARGE", `A file may be at most ${config.fileMaxBytes} bytes`);
				const file = await this.store(ctx, Readable.from([bytes]), cleanFileName(ctx.params.fileName), ctx.params.onlyImages);
				ctx.meta.$statusCode = 201;
				ctx.meta.$location = file.url;
				return file;
			},
		},

		download: {
			params: { $$strict: "remove", fileId: { type: "string", max: 64 } },
			async handler(this: FilesThis, ctx: Ctx<{ fileId: string }>) {
				const file = FILE_ID_PATTERN.test(ctx.params.fileId) ? await this.byId(ctx.params.fileId) : null;
				if (!file || !(await this.storage.exists(file.file_id))) throw notFound("File");
				const inline = file.file_type !== "document";
				const headers: Record<string, string> = {
					"Content-Type": file.mimetype,
					"X-Content-Type-Options": "nosniff",
					"Content-Disposition": `${inline ? "inline" : "attachment"}; filename="${file.file_name.replace(/[^\x20-\x7e]/g, "_")}"; filename*=UTF-8''${encodeURIComponent(file.file_name)}`,
					"Accept-Ranges": "bytes",
					"Cache-Control": "private, max-age=31536000, immutable",
					// Even if a browser were tricked into rendering it, it could run nothing.
					"Content-Security-Policy": "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; sandbox",
				};
				const range = /^bytes=(\d*)-(\d*)$/.exec(ctx.meta.range ?? "");
				if (range && file.size > 0) {
					let start = range[1] === "" ? file.size - Number(range[2]) : Number(range[1]);
					let end = range[1] === "" || range[2] === "" ? file.size - 1 : Number(range[2]);
					start = Math.max(0, start);
					end = Math.min(end, file.size - 1);
					if (start > end || start >= file.size) {
						ctx.meta.$statusCode = 416;
						ctx.meta.$responseHeaders = { ...headers, "Content-Range": `bytes */${file.size}` };
						return null;
					}
					ctx.meta.$statusCode = 206;
					ctx.meta.$responseType = file.mimetype;
					ctx.meta.$responseHeaders = { ...headers, "Content-Range": `bytes ${start}-${end}/${file.size}`, "Content-Length": String(end - start + 1) };
					return this.storage.read(file.file_id, { start, end });
				}
				ctx.meta.$responseType = file.mimetype;
				ctx.meta.$responseHeaders = { ...headers, "Content-Length": String(file.size) };
				return this.storage.read(file.file_id);
			},
		},

		remove: {
			params: { $$strict: "remove", fileId: { type: "string", optional: true, max: 64 }, fileUrl: { type: "string", optional: true, max: 2048 } },
			async handler(this: FilesThis, ctx: Ctx<{ fileId?: string; fileUrl?: string }>) {
				const me = callerOf(ctx);
				const ref = ctx.params.fileId ?? ctx.params.fileUrl;
				if (!ref) throw validationError("Give fileId or fileUrl", [{ field: "fileId", type: "required", message: "fileId or fileUrl" }]);
				const fileId = this.fileIdOf(ref);
				const file = fileId ? await this.byId(fileId) : null;
				if (!file) throw notFound("File");
				if (file.owner_id !== me.id && !(await ctx.call("users.isAdmin", { userId: me.id }))) throw forbidden("Only the uploader or an admin deletes a file");
				// Metadata first: once it is gone the file cannot be served, even if removing the bytes fails.
				await this.stores.files.removeMany({ file_id: file.file_id });
				await this.storage.remove(file.file_id);
				ctx.meta.$statusCode = 204;
				return null;
			},
		},

		/** Undo uploads of a request that failed as a whole (not routed by the gateway). */
		discard: {
			visibility: "public",
			params: { fileIds: { type: "array", items: "string", max: 20 } },
			async handler(this: FilesThis, ctx: Ctx<{ fileIds: string[] }>) {
				const me = callerOf(ctx);
				for (const fileId of ctx.params.fileIds) {
					const file = await this.byId(fileId);
					if (!file || file.owner_id !== me.id) continue;
					await this.stores.files.removeMany({ file_id: fileId });
					await this.storage.remove(fileId);
				}
				return true;
			},
		},

		/** Attachments of a message: files of this server, uploaded by the sender (not routed). */
		verifyAttachments: {
			visibility: "public",
			params: { refs: { type: "array", items: "string", max: 10 }, ownerId: { type: "number", integer: true, positive: true } },
			async handler(this: FilesThis, ctx: Ctx<{ refs: string[]; ownerId: number }>) {
				const out = [];
				for (const ref of ctx.params.refs) {
					const fileId = this.fileIdOf(ref);
					const file = fileId ? await this.byId(fileId) : null;
					if (!file) throw validationError("An attachment is not a file of this server", [{ field: "attachments", type: "file", message: `Unknown file ${ref}` }]);
					if (file.owner_id !== ctx.params.ownerId) throw forbidden("Attach only files you uploaded");
					out.push(presentFile(file));
				}
				return out;
			},
		},
	},

	methods: {
		async byId(this: FilesThis, fileId: string) {
			return (await this.stores.files.findOne({ file_id: fileId })) as FileDoc | null;
		},

		/** A file id from an id, a /files/<id> path, or a URL of this server's files. */
		fileIdOf(ref: string) {
			const match = /(?:^|\/files\/)([a-f0-9]{32})(?:[?#].*)?$/.exec(ref.trim());
			return match ? match[1] : null;
		},

		async store(this: FilesThis, ctx: Ctx<unknown>, source: Readable, fileName: string, onlyImages: boolean) {
			const me = callerOf(ctx);
			let fileId: string | null = null;
			try {
				const { head, whole } = await peek(source, SNIFF_BYTES);
				if (head.length === 0) throw validationError("The file is empty", [{ field: "file", type: "required", message: "Empty file" }]);
				const type = detectType(head, fileName);
				if (!type || (onlyImages && type.kind !== "image")) {
					throw appError("UNSUPPORTED_MEDIA_TYPE", onlyImages ? "Only images are accepted here" : "This type of file is not accepted");
				}
				// The stored name is ours: random, never derived from the client's name.
				fileId = crypto.randomBytes(16).toString("hex");
				const { size, sha256 } = await this.storage.write(fileId, whole, config.fileMaxBytes);
				const doc = (await this.stores.files.insert({
					file_id: fileId,
					owner_id: me.id,
					file_name: fileName,
					mimetype: type.mime,
					file_type: type.kind,
					size,
					checksum: sha256,
					created_at: new Date(),
				})) as FileDoc;
				return presentFile(doc);
			} catch (err) {
				// Drain what the client still sends, and keep nothing of this upload.
				source.resume();
				if (fileId) await this.storage.remove(fileId).catch(() => undefined);
				throw err;
			}
		},
	},

	created(this: FilesThis) {
		this.storage = new LocalDiskStorage(path.join(config.dataDir, "files"));
	},
};

export default FilesService;

//! wgpu render executor: a user's WGSL fragment program drawn headless into an
//! offscreen RGBA8 texture and read back to host memory, one frame at a time or
//! several frames in flight.
//!
//! # Layout
//! - [`probe_adapters`]: every adapter wgpu can see, for the capability report.
//! - [`Gpu`]: the device and queue, created once per node process.
//! - [`Renderer`]: one compiled shader at one size, created per chunk.
//!
//! The renderer is deterministic for a given frame: the only inputs to a draw
//! are the shader and [`Uniforms::for_frame`], and nothing blends with a
//! previous frame (every pass clears its target).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{mpsc, Arc, Mutex};

use drover_shared::shader::{compose, validate, Uniforms, FRAGMENT_ENTRY, VERTEX_ENTRY};
use thiserror::Error;

/// Environment variable that overrides adapter choice: `cpu` forces a CPU
/// adapter (lavapipe), `gpu` requires a hardware or virtual GPU, `auto` (or
/// unset) prefers a GPU and falls back to the CPU.
pub const ADAPTER_ENV: &str = "DROVER_ADAPTER";

/// Largest width or height accepted, in pixels. 8K is the largest size the
/// encoders are expected to take, and it bounds the readback buffers
/// (8192 * 8192 * 4 bytes = 256 MiB each, times [`FRAMES_IN_FLIGHT`]).
pub const MAX_DIMENSION_PX: u32 = 8192;

/// Frames [`Renderer::render_range`] keeps submitted but not yet read back.
/// Three keeps the GPU busy while the host copies out the oldest frame; more
/// only adds memory and latency.
pub const FRAMES_IN_FLIGHT: usize = 3;

/// Pixel format of the offscreen target and of every frame handed out. Unorm
/// (not sRGB) so the shader's output values are the bytes the encoder sees.
const TARGET_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

/// Bytes per pixel of [`TARGET_FORMAT`].
const BYTES_PER_PIXEL: u32 = 4;

/// Why rendering failed.
#[derive(Debug, Error)]
pub enum RenderError {
    /// No adapter of the wanted kind was found.
    #[error("no {wanted} adapter found (adapters seen: {})", describe_seen(seen))]
    NoAdapter {
        /// What was asked for: `"GPU or CPU"`, `"CPU"` or `"GPU"`.
        wanted: &'static str,
        /// Every adapter wgpu enumerated, whatever its kind.
        seen: Vec<AdapterReport>,
    },
    /// [`ADAPTER_ENV`] holds a value other than `auto`, `cpu` or `gpu`.
    #[error("{ADAPTER_ENV}={value:?} is not one of \"auto\", \"cpu\", \"gpu\"")]
    BadAdapterChoice {
        /// The value found in the environment.
        value: String,
    },
    /// Every candidate adapter refused to create a device.
    #[error("could not open a device on any adapter: {0}")]
    Device(String),
    /// The shader does not parse, validate or compile.
    #[error("shader rejected: {0}")]
    Shader(String),
    /// The requested frame size is zero or too large.
    #[error("frame size {width}x{height} is outside 1..={limit} pixels per side")]
    BadSize {
        /// Requested width in pixels.
        width: u32,
        /// Requested height in pixels.
        height: u32,
        /// The largest side accepted: [`MAX_DIMENSION_PX`] or the device's
        /// texture limit, whichever is smaller.
        limit: u32,
    },
    /// The GPU failed while drawing or reading back a frame (device lost,
    /// out of memory, mapping failure).
    #[error("frame {frame}: {message}")]
    Frame {
        /// The frame being rendered.
        frame: u64,
        /// What the device reported.
        message: String,
    },
    /// The consumer given to [`Renderer::render_range`] refused a frame.
    #[error("frame sink stopped: {0}")]
    Sink(String),
}

fn describe_seen(seen: &[AdapterReport]) -> String {
    if seen.is_empty() {
        return "none".to_string();
    }
    seen.iter()
        .map(|a| format!("{} [{} {}]", a.name, a.backend, a.device_type))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One adapter as the capability report describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterReport {
    /// The adapter's name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// The backend it was found through: `Vulkan`, `Metal`, `Dx12`, `Gl`.
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other`.
    pub device_type: String,
    /// Driver name and version, as the driver reports them.
    pub driver: String,
    /// PCI vendor id (`0x10DE` for NVIDIA), or the Khronos vendor id of a
    /// software driver (`0x10005` for Mesa); 0 when the backend does not say.
    pub vendor_id: u32,
}

impl AdapterReport {
    fn from_info(info: &wgpu::AdapterInfo) -> Self {
        let driver = match (info.driver.is_empty(), info.driver_info.is_empty()) {
            (false, false) => format!("{} {}", info.driver, info.driver_info),
            (false, true) => info.driver.clone(),
            (true, _) => info.driver_info.clone(),
        };
        AdapterReport {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: device_type_name(info.device_type).to_string(),
            driver,
            vendor_id: info.vendor,
        }
    }
}

fn device_type_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "DiscreteGpu",
        wgpu::DeviceType::IntegratedGpu => "IntegratedGpu",
        wgpu::DeviceType::VirtualGpu => "VirtualGpu",
        wgpu::DeviceType::Cpu => "Cpu",
        wgpu::DeviceType::Other => "Other",
    }
}

fn new_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    // All backends compiled in for this platform; wgpu skips those whose
    // loader is missing (no libvulkan, no EGL) instead of failing.
    desc.backends = wgpu::Backends::all();
    wgpu::Instance::new(desc)
}

fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

/// Every adapter wgpu enumerates on this machine, on every native backend.
pub fn probe_adapters() -> Vec<AdapterReport> {
    enumerate(&new_instance())
        .iter()
        .map(|a| AdapterReport::from_info(&a.get_info()))
        .collect()
}

/// Which adapters [`Gpu::new`] may pick, from [`ADAPTER_ENV`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum AdapterChoice {
    Auto,
    Cpu,
    Gpu,
}

impl AdapterChoice {
    fn from_env() -> Result<Self, RenderError> {
        match std::env::var(ADAPTER_ENV) {
            Err(_) => Ok(AdapterChoice::Auto),
            Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "auto" => Ok(AdapterChoice::Auto),
                "cpu" => Ok(AdapterChoice::Cpu),
                "gpu" => Ok(AdapterChoice::Gpu),
                _ => Err(RenderError::BadAdapterChoice { value: v }),
            },
        }
    }

    fn wanted(self) -> &'static str {
        match self {
            AdapterChoice::Auto => "GPU or CPU",
            AdapterChoice::Cpu => "CPU",
            AdapterChoice::Gpu => "GPU",
        }
    }

    /// Rank of an adapter under this choice, lower is better; `None` excludes it.
    fn rank(self, info: &wgpu::AdapterInfo) -> Option<(u8, u8)> {
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            // Unknown kinds are tried last in auto mode only: they might be
            // anything, so neither `cpu` nor `gpu` can promise them.
            wgpu::DeviceType::Other => 4,
        };
        let allowed = match self {
            AdapterChoice::Auto => true,
            AdapterChoice::Cpu => kind == 3,
            AdapterChoice::Gpu => kind <= 2,
        };
        // Among adapters of one kind prefer the native modern APIs: the GL
        // backend is slower and the least tested headless.
        let backend = match info.backend {
            wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
            _ => 1,
        };
        allowed.then_some((kind, backend))
    }
}

struct GpuInner {
    report: AdapterReport,
    device: wgpu::Device,
    queue: wgpu::Queue,
    /// Errors no error scope caught (raised while drawing, not while
    /// compiling): recorded here and turned into [`RenderError::Frame`] by
    /// the next frame read back, instead of wgpu's default panic.
    uncaptured: Arc<Mutex<Option<String>>>,
}

/// The device, queue and chosen adapter. Created once per node process and
/// shared (cheaply cloned) by every [`Renderer`].
#[derive(Clone)]
pub struct Gpu {
    inner: Arc<GpuInner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.inner.report)
            .finish_non_exhaustive()
    }
}

impl Gpu {
    /// Opens a device on the best adapter: a discrete GPU, then integrated,
    /// then virtual, then a CPU rasteriser (lavapipe). [`ADAPTER_ENV`]`=cpu`
    /// forces a CPU adapter, `=gpu` requires a GPU.
    pub fn new() -> Result<Gpu, RenderError> {
        let choice = AdapterChoice::from_env()?;
        let instance = new_instance();
        let adapters = enumerate(&instance);
        let seen: Vec<AdapterReport> = adapters
            .iter()
            .map(|a| AdapterReport::from_info(&a.get_info()))
            .collect();
        let mut candidates: Vec<((u8, u8), wgpu::Adapter)> = adapters
            .into_iter()
            .filter_map(|a| choice.rank(&a.get_info()).map(|r| (r, a)))
            .collect();
        candidates.sort_by_key(|(rank, _)| *rank);
        if candidates.is_empty() {
            return Err(RenderError::NoAdapter {
                wanted: choice.wanted(),
                seen,
            });
        }
        let mut failures = Vec::new();
        for (_, adapter) in candidates {
            let report = AdapterReport::from_info(&adapter.get_info());
            let desc = wgpu::DeviceDescriptor {
                label: Some("drover"),
                // Ask for what the adapter has so large frames work on big
                // GPUs; sizes are checked against these limits per renderer.
                required_limits: adapter.limits(),
                ..Default::default()
            };
            match pollster::block_on(adapter.request_device(&desc)) {
                Ok((device, queue)) => {
                    let uncaptured = Arc::new(Mutex::new(None));
                    let slot = Arc::clone(&uncaptured);
                    device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                        tracing::error!("wgpu error outside any scope: {e}");
                        if let Ok(mut s) = slot.lock() {
                            s.get_or_insert_with(|| e.to_string());
                        }
                    }));
                    tracing::info!(
                        adapter = %report.name,
                        backend = %report.backend,
                        kind = %report.device_type,
                        "render device opened"
                    );
                    return Ok(Gpu {
                        inner: Arc::new(GpuInner {
                            report,
                            device,
                            queue,
                            uncaptured,
                        }),
                    });
                }
                Err(e) => failures.push(format!("{} [{}]: {e}", report.name, report.backend)),
            }
        }
        Err(RenderError::Device(failures.join("; ")))
    }

    /// The adapter this device runs on.
    pub fn adapter(&self) -> &AdapterReport {
        &self.inner.report
    }

    fn take_uncaptured(&self) -> Option<String> {
        self.inner.uncaptured.lock().ok().and_then(|mut s| s.take())
    }
}

/// One readback slot: its own uniforms (so queued writes for later frames
/// cannot race a frame still in flight) and its own mappable buffer.
struct Slot {
    uniforms: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    readback: wgpu::Buffer,
}

/// A frame submitted but not yet read back.
struct InFlight {
    frame: u64,
    slot: usize,
    submission: wgpu::SubmissionIndex,
    mapped: mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
}

/// One compiled shader at one size and rate: renders frames of a chunk.
pub struct Renderer {
    gpu: Gpu,
    width: u32,
    height: u32,
    fps: u32,
    /// Bytes per row in the readback buffers: `width * 4` rounded up to
    /// [`wgpu::COPY_BYTES_PER_ROW_ALIGNMENT`].
    padded_row_bytes: u32,
    pipeline: wgpu::RenderPipeline,
    target: wgpu::Texture,
    target_view: wgpu::TextureView,
    slots: Vec<Slot>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("adapter", &self.gpu.inner.report.name)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("fps", &self.fps)
            .finish_non_exhaustive()
    }
}

impl Renderer {
    /// Compiles `user_source` (composed with the prelude) for a
    /// `width`x`height` RGBA8 target. A shader that does not parse, validate
    /// or compile is [`RenderError::Shader`], never a panic.
    pub fn new(
        gpu: &Gpu,
        user_source: &str,
        width: u32,
        height: u32,
        fps: u32,
    ) -> Result<Renderer, RenderError> {
        let device = &gpu.inner.device;
        let limit = MAX_DIMENSION_PX.min(device.limits().max_texture_dimension_2d);
        if width == 0 || height == 0 || width > limit || height > limit {
            return Err(RenderError::BadSize {
                width,
                height,
                limit,
            });
        }
        // naga's own messages carry the user's line numbers; wgpu's would
        // point into the composed module.
        validate(user_source).map_err(|e| RenderError::Shader(e.to_string()))?;

        // Scopes are thread-local and popped in reverse order of pushing.
        let oom_scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal_scope = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation_scope = device.push_error_scope(wgpu::ErrorFilter::Validation);

        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("drover user shader"),
            source: wgpu::ShaderSource::Wgsl(compose(user_source).into()),
        });
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("drover uniforms"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: wgpu::BufferSize::new(UNIFORM_BYTES),
                },
                count: None,
            }],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("drover pipeline layout"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("drover pipeline"),
            layout: Some(&pipeline_layout),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some(VERTEX_ENTRY),
                compilation_options: Default::default(),
                buffers: &[],
            },
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some(FRAGMENT_ENTRY),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::ColorTargetState {
                    format: TARGET_FORMAT,
                    blend: None,
                    write_mask: wgpu::ColorWrites::ALL,
                })],
            }),
            multiview_mask: None,
            cache: None,
        });

        let target = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("drover target"),
            size: wgpu::Extent3d {
                width,
                height,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: TARGET_FORMAT,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let target_view = target.create_view(&wgpu::TextureViewDescriptor::default());

        let padded_row_bytes = (width * BYTES_PER_PIXEL)
            .div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT)
            * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let slots = (0..FRAMES_IN_FLIGHT)
            .map(|_| {
                let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("drover uniforms"),
                    size: UNIFORM_BYTES,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("drover uniforms"),
                    layout: &layout,
                    entries: &[wgpu::BindGroupEntry {
                        binding: 0,
                        resource: uniforms.as_entire_binding(),
                    }],
                });
                let readback = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("drover readback"),
                    size: u64::from(padded_row_bytes) * u64::from(height),
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                Slot {
                    uniforms,
                    bind_group,
                    readback,
                }
            })
            .collect();

        let validation = pollster::block_on(validation_scope.pop());
        let internal = pollster::block_on(internal_scope.pop());
        let oom = pollster::block_on(oom_scope.pop());
        if let Some(e) = validation.or(internal) {
            return Err(RenderError::Shader(error_chain(&e)));
        }
        if let Some(e) = oom {
            return Err(RenderError::Device(error_chain(&e)));
        }
        Ok(Renderer {
            gpu: gpu.clone(),
            width,
            height,
            fps,
            padded_row_bytes,
            pipeline,
            target,
            target_view,
            slots,
        })
    }

    /// Renders one frame: tightly packed RGBA8, `width * height * 4` bytes,
    /// top row first.
    pub fn render(&mut self, frame: u64) -> Result<Vec<u8>, RenderError> {
        let pending = self.submit(frame, 0);
        self.read_back(pending)
    }

    /// Renders `frames` in order and hands each to `sink`, keeping up to
    /// [`FRAMES_IN_FLIGHT`] frames on the GPU so drawing overlaps readback.
    /// Output per frame is identical to [`Renderer::render`]. A `sink` error
    /// stops the range and is returned as is.
    pub fn render_range(
        &mut self,
        frames: Range<u64>,
        sink: impl FnMut(u64, Vec<u8>) -> Result<(), RenderError>,
    ) -> Result<(), RenderError> {
        let end = frames.end;
        self.render_while(frames.start, FRAMES_IN_FLIGHT, |frame| frame < end, sink)
    }

    /// Renders frames `first`, `first + 1`, ... for as long as `may_start`
    /// allows, and hands each to `sink` in order.
    ///
    /// `may_start(frame)` is asked right before `frame` is submitted to the
    /// GPU, once per frame and in order; the first `false` ends the range,
    /// and the frames already submitted are still read back and handed out.
    /// So a caller whose range can shrink while it renders (work stealing)
    /// decides about each frame at the moment it is started, and the frames
    /// handed to `sink` are exactly those it allowed.
    ///
    /// At most `frames_in_flight` frames (clamped to 1..=[`FRAMES_IN_FLIGHT`])
    /// are submitted and not yet read back; 1 renders strictly one frame at a
    /// time, so each frame's time can be measured alone. A `sink` error stops
    /// the range and is returned as is.
    pub fn render_while(
        &mut self,
        first: u64,
        frames_in_flight: usize,
        mut may_start: impl FnMut(u64) -> bool,
        mut sink: impl FnMut(u64, Vec<u8>) -> Result<(), RenderError>,
    ) -> Result<(), RenderError> {
        let depth = frames_in_flight.clamp(1, FRAMES_IN_FLIGHT);
        let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(depth);
        let mut result = Ok(());
        let mut next = Some(first);
        let mut submitted: usize = 0;
        while let Some(frame) = next {
            if in_flight.len() == depth {
                if let Some(oldest) = in_flight.pop_front() {
                    result = self
                        .read_back_frame(oldest)
                        .and_then(|(f, rgba)| sink(f, rgba));
                    if result.is_err() {
                        break;
                    }
                }
            }
            // Asked only now, after the oldest frame is out, so that the
            // decision is as late as it can be: a shrink that arrives while
            // the GPU works still stops the very next frame.
            if !may_start(frame) {
                break;
            }
            // Slots are used in rotation and at most `depth` (<= the number
            // of slots) are in flight, so the slot used `depth` frames ago
            // has just been read back (or never used) and is free.
            in_flight.push_back(self.submit(frame, submitted % depth));
            submitted += 1;
            next = frame.checked_add(1);
        }
        while let Some(pending) = in_flight.pop_front() {
            if result.is_ok() {
                result = self
                    .read_back_frame(pending)
                    .and_then(|(f, rgba)| sink(f, rgba));
            } else {
                self.abandon(pending);
            }
        }
        result
    }

    /// Records and submits the draw of `frame` into slot `slot`, then asks
    /// for the slot's readback buffer to be mapped once the GPU is done.
    fn submit(&mut self, frame: u64, slot: usize) -> InFlight {
        let device = &self.gpu.inner.device;
        let queue = &self.gpu.inner.queue;
        let s = &self.slots[slot];
        let uniforms = Uniforms::for_frame(frame, self.fps, self.width, self.height);
        queue.write_buffer(&s.uniforms, 0, &uniforms.to_bytes());

        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("drover frame"),
        });
        {
            let mut pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("drover frame"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: &self.target_view,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                        store: wgpu::StoreOp::Store,
                    },
                })],
                depth_stencil_attachment: None,
                timestamp_writes: None,
                occlusion_query_set: None,
                multiview_mask: None,
            });
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &s.bind_group, &[]);
            // The prelude's vertex stage makes a full-screen triangle from
            // the vertex index alone.
            pass.draw(0..3, 0..1);
        }
        encoder.copy_texture_to_buffer(
            wgpu::TexelCopyTextureInfo {
                texture: &self.target,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::TexelCopyBufferInfo {
                buffer: &s.readback,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(self.padded_row_bytes),
                    rows_per_image: Some(self.height),
                },
            },
            wgpu::Extent3d {
                width: self.width,
                height: self.height,
                depth_or_array_layers: 1,
            },
        );
        let submission = queue.submit(Some(encoder.finish()));
        let (tx, rx) = mpsc::channel();
        s.readback.map_async(wgpu::MapMode::Read, .., move |r| {
            // The receiver outlives the callback unless the renderer is
            // dropped mid-frame, when nobody wants the result.
            let _ = tx.send(r);
        });
        InFlight {
            frame,
            slot,
            submission,
            mapped: rx,
        }
    }

    fn read_back(&mut self, pending: InFlight) -> Result<Vec<u8>, RenderError> {
        self.read_back_frame(pending).map(|(_, rgba)| rgba)
    }

    /// Waits for `pending`'s submission, copies its pixels out without the
    /// row padding, and unmaps the slot for reuse.
    fn read_back_frame(&mut self, pending: InFlight) -> Result<(u64, Vec<u8>), RenderError> {
        let frame = pending.frame;
        let fail = |message: String| RenderError::Frame { frame, message };
        self.gpu
            .inner
            .device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(pending.submission),
                timeout: None,
            })
            .map_err(|e| fail(format!("waiting for the GPU: {e}")))?;
        let mapped = pending
            .mapped
            .recv()
            .map_err(|_| fail("readback mapping was dropped".to_string()))
            .and_then(|r| r.map_err(|e| fail(format!("mapping the readback buffer: {e}"))));
        if let Some(e) = self.gpu.take_uncaptured() {
            if mapped.is_ok() {
                self.slots[pending.slot].readback.unmap();
            }
            return Err(fail(e));
        }
        mapped?;
        let buffer = &self.slots[pending.slot].readback;
        let row_bytes = (self.width * BYTES_PER_PIXEL) as usize;
        let mut out = Vec::with_capacity(row_bytes * self.height as usize);
        {
            let view = buffer
                .get_mapped_range(..)
                .map_err(|e| fail(format!("reading the readback buffer: {e}")))?;
            for row in view.chunks_exact(self.padded_row_bytes as usize) {
                out.extend_from_slice(&row[..row_bytes]);
            }
        }
        buffer.unmap();
        Ok((frame, out))
    }

    /// Lets a submitted frame finish and frees its slot without reading it.
    fn abandon(&mut self, pending: InFlight) {
        let _ = self.gpu.inner.device.poll(wgpu::PollType::Wait {
            submission_index: Some(pending.submission),
            timeout: None,
        });
        if let Ok(Ok(())) = pending.mapped.recv() {
            self.slots[pending.slot].readback.unmap();
        }
    }

    /// The adapter this renderer draws on.
    pub fn adapter(&self) -> &AdapterReport {
        self.gpu.adapter()
    }
}

/// Size of the uniform block (see [`Uniforms::to_bytes`]).
const UNIFORM_BYTES: u64 = 16;

/// `e` and its chain of causes on one line: wgpu's top-level messages alone
/// ("Shader module is invalid") do not say what is wrong.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let s = cause.to_string();
        if !message.contains(&s) {
            message.push_str(": ");
            message.push_str(&s);
        }
        source = cause.source();
    }
    message
}

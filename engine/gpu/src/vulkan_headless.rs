//! A Vulkan instance without the display-server surface extensions (Wayland, X11).
//! wgpu-hal enables them whenever the loader has them; Mesa's device-select layer then
//! connects to Wayland while listing devices, and without a display libwayland prints
//! "XDG_RUNTIME_DIR is invalid" twice. sdgraph never presents, so it leaves them out.

use std::ffi::CStr;

use ash::{khr, vk};
use wgpu::hal::vulkan::Instance as HalInstance;
use wgpu::{hal, wgc};

/// The extensions that make layers and drivers talk to a display server.
const DISPLAY_SERVER_EXTENSIONS: [&CStr; 3] =
    [khr::wayland_surface::NAME, khr::xlib_surface::NAME, khr::xcb_surface::NAME];

/// A Vulkan-only wgpu instance as `wgpu::Instance::new(desc)` would make it, less the
/// display-server extensions; `None` where that cannot be done here (no loader, an old
/// driver, debugging flags that need layers), so the caller keeps wgpu's usual path.
pub(crate) fn instance(desc: &wgpu::InstanceDescriptor) -> Option<wgpu::Instance> {
    // Debugging needs the validation layer and debug utils, which only wgpu-hal sets up.
    let debugging =
        wgpu::InstanceFlags::DEBUG | wgpu::InstanceFlags::VALIDATION | wgpu::InstanceFlags::GPU_BASED_VALIDATION;
    if !desc.backends.contains(wgpu::Backends::VULKAN) || desc.flags.intersects(debugging) {
        return None;
    }
    let hal_instance = hal_instance(desc)?;
    // SAFETY: `hal_instance` is a valid Vulkan instance that owns its VkInstance; wgpu-core
    // takes it whole and destroys it with its last reference.
    let mut global = unsafe { wgc::global::Global::from_hal_instance::<hal::api::Vulkan>("wgpu", hal_instance) };
    // from_hal_instance gives wgpu-core the build's default flags (debug builds: debugging;
    // all: buffers capped at 4 GiB for indirect validation), not ours: take the instance out
    // (a Vulkan-less one, which opens nothing, is left in its place) and set them.
    let mut none = wgpu::InstanceDescriptor::new_without_display_handle();
    none.backends = wgpu::Backends::empty();
    let mut core = std::mem::replace(&mut global.instance, wgc::instance::Instance::new("wgpu", none, None));
    core.flags = desc.flags;
    // SAFETY: `core` was made by wgpu-core just above and nothing else refers to it.
    Some(unsafe { wgpu::Instance::from_core(core) })
}

/// The VkInstance wgpu-hal's `Instance::init` would create (same application info, API
/// version and extensions, no layers), less the display-server extensions.
fn hal_instance(desc: &wgpu::InstanceDescriptor) -> Option<HalInstance> {
    // SAFETY: loads the system's Vulkan loader, exactly as wgpu-hal does.
    let entry = unsafe { ash::Entry::load() }.ok()?;
    // SAFETY: `entry` is a loaded Vulkan entry point.
    let version = match unsafe { entry.try_enumerate_instance_version() } {
        Ok(Some(v)) => v,
        Ok(None) => vk::API_VERSION_1_0,
        Err(_) => return None,
    };
    let mut extensions = HalInstance::desired_extensions(&entry, version, desc.flags).ok()?;
    extensions.retain(|e| !DISPLAY_SERVER_EXTENSIONS.contains(e));
    let names: Vec<_> = extensions.iter().map(|e| e.as_ptr()).collect();
    // wgpu-hal's values: drivers pick per-engine workarounds by these.
    let app = vk::ApplicationInfo::default()
        .application_name(c"wgpu")
        .application_version(1)
        .engine_name(c"wgpu-hal")
        .engine_version(2)
        .api_version(if version < vk::API_VERSION_1_1 { vk::API_VERSION_1_0 } else { vk::API_VERSION_1_3 });
    let info = vk::InstanceCreateInfo::default().application_info(&app).enabled_extension_names(&names);
    // SAFETY: `info`, `app` and `names` (pointers into 'static names) outlive the call, and
    // every extension named was reported available by this loader.
    let raw = unsafe { entry.create_instance(&info, None) }.ok()?;
    let handle = raw.clone();
    // SAFETY: `raw` was created from `entry` with `version`, `extensions` and `desc.flags`.
    // `extensions` lacks the display-server ones desired_extensions lists: wgpu-hal only
    // consults them to create surfaces, which check for them and fail cleanly. No drop
    // callback: the hal instance owns `raw` and destroys it once, when dropped.
    // has_nv_optimus = false: it only turns presentation off.
    let made = unsafe {
        HalInstance::from_raw(
            entry,
            raw,
            version,
            0,
            None,
            extensions,
            desc.flags,
            desc.memory_budget_thresholds,
            false,
            None,
        )
    };
    match made {
        Ok(instance) => Some(instance),
        Err(_) => {
            // SAFETY: from_raw builds the owner of `raw` last (and has no failing path
            // in wgpu-hal 30.0.1), so on failure nothing else destroys it.
            unsafe { handle.destroy_instance(None) };
            None
        }
    }
}
